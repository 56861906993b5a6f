"""The one place hvac is imported.

hvac ships no type annotations; keeping ``Any`` at this one boundary keeps the rest of the
package strictly typed. The client is only ever built by :mod:`kmsenvelope_vault.client`.
"""

from __future__ import annotations

from typing import Any

# Untyped (types-hvac is optional): the ignore holds whether or not the stubs are installed.
import hvac as _hvac  # type: ignore[import-untyped,unused-ignore]
import hvac.exceptions as _exceptions  # type: ignore[import-untyped,unused-ignore]

__all__ = ["Client", "hvac_exceptions"]

Client: Any = _hvac.Client
hvac_exceptions: Any = _exceptions
