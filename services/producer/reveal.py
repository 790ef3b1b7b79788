"""``reveal``: in a worklist export, open this fund's own sealed references, and only those.

Exports render every sealed reference as ``scelle:<key_id>:<value>`` (see
:func:`services.producer.seal.token`). A token is replaced by the clear reference when its
key id is one of this fund's sealing keys *and* the seal verifies (AES-GCM, associated
data = fund + key id, see :mod:`services.producer.seal` for why the pseudonym binding is
inside the ciphertext). Every other token — another fund's, or one that does not verify —
is left exactly as it was. The file is streamed line by line; line endings, BOM and all
other text are kept. The output holds clear file references: it is created 0600.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from services.core.types import Fund
from services.errors import CryptoError, InputError
from services.producer.keys import load_fund_secrets
from services.producer.seal import TOKEN_RE, open_sealed


@dataclass
class RevealCounts:
    opened: int = 0
    foreign: int = 0       # another fund's tokens, left opaque
    unverified: int = 0    # this fund's key id but the seal does not verify: left as is


def reveal_file(key_dir: Path, fund: Fund, src: Path, dst: Path) -> RevealCounts:
    secrets = load_fund_secrets(key_dir, fund)
    keys = secrets.sealing_keys
    counts = RevealCounts()

    def replace(m: re.Match[str]) -> str:
        key_id, value = m.group(1), m.group(2)
        if key_id not in keys:
            counts.foreign += 1
            return m.group(0)
        try:
            clear = open_sealed(fund, keys, key_id, value)
        except CryptoError:
            counts.unverified += 1
            return m.group(0)
        counts.opened += 1
        return clear

    if src.resolve() == dst.resolve():
        raise InputError("--out must differ from --input", "write the revealed file elsewhere")
    try:
        fin = open(src, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read {src}: {exc.strerror}", "check the path given to --input") from exc
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with fin, open(fd, "w", encoding="utf-8", newline="") as fout:
            for line in fin:
                fout.write(TOKEN_RE.sub(replace, line))
    except UnicodeDecodeError as exc:
        dst.unlink(missing_ok=True)
        raise InputError(f"{src} is not UTF-8 text", "give the CSV or HTML export of the worklist") from exc
    return counts
