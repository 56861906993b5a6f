"""The envelope format v1 in code (docs/format.md): nothing else.

- ``header``: the binary header layout, its one parser, its encoder, limits and context rules
  (sections 5 and 9);
- ``keyschedule``: HKDF-SHA256 and HMAC-SHA256, the payload and MAC keys, the header MAC
  (sections 5.6 and 6);
- ``chunks``: the payload chunk codec: nonces, final flag, sealing and opening chunks, payload
  length (section 7);
- ``compact``: the ``kmsenv1.`` text form, in memory and as streams (section 8).

No threads, no buffers kept between calls, no providers: running a payload through the chunk
codec is ``kmsenvelope.pipeline``'s job.
"""
