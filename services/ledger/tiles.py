"""The ledger as tiles (C2SP tlog-tiles): served read-only over HTTP, exported as a folder,
and verified from them alone, without our database.

Layout (https://c2sp.org/tlog-tiles), tile height 8 (256 hashes a tile)::

    checkpoint                       the newest cosigned checkpoint (else the newest)
    tile/<L>/<N>[.p/<W>]             hashes of level L: 32-byte SHA-256 each, W of them
    tile/entries/<N>[.p/<W>]         entry bundle: each entry as a big-endian uint16 length
                                     then its bytes (its RFC 8785 form, the leaf data)

Level 0 holds the leaf hashes, level L the roots of the complete subtrees of 256**L
leaves, in order. ``<N>`` is written in groups of three digits, all but the last prefixed
with ``x`` (1234067 → ``x001/x234/067``). A full tile (W = 256) never changes; a partial
tile ``.p/W`` holds the first W hashes of a tile the tree has not filled yet. Go's
``golang.org/x/mod/sumdb/tlog`` reads these tiles (its paths carry the height:
``tile/8/<L>/<N>``), and the tests check our checkpoints and proofs with it.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from services.errors import InputError
from services.ledger.checkpoint import Checkpoint
from services.ledger.merkle import CompactRange, leaf_hash
from services.ledger.store import Ledger

TILE_WIDTH: Final = 256
HASH: Final = 32
_MAX_LEVELS: Final = 8

#: Reads a tile path (``tile/0/x001/234``); None when there is no such tile.
TileReader = Callable[[str], bytes | None]


def encode_index(n: int) -> str:
    """``<N>`` of a tile path: groups of three digits, all but the last prefixed by x."""
    if n < 0:
        raise ValueError("a tile index is not negative")
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(parts))


def tile_path(level: int | str, n: int, width: int = TILE_WIDTH) -> str:
    """``tile/<level>/<N>[.p/<W>]``; ``level`` is a number or ``"entries"``."""
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_index(n)}{suffix}"


@dataclass(frozen=True)
class TileRef:
    level: int  # -1 for an entry bundle
    n: int
    width: int


def parse_tile_path(path: str) -> TileRef | None:
    """The tile a request path names, or None if it names none (exactly our form)."""
    parts = path.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "tile":
        return None
    level_text = parts[1]
    width = TILE_WIDTH
    rest = parts[2:]
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not rest[-1].isdigit():
            return None
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][:-2]]
        if not 0 < width < TILE_WIDTH:
            return None
    n = 0
    for i, part in enumerate(rest):
        digits = part[1:] if i < len(rest) - 1 and part.startswith("x") else part
        if len(digits) != 3 or not digits.isdigit():
            return None
        n = n * 1000 + int(digits)
    if level_text == "entries":
        level = -1
    elif level_text.isdigit() and int(level_text) < _MAX_LEVELS:
        level = int(level_text)
    else:
        return None
    ref = TileRef(level, n, width)
    if tile_path("entries" if level < 0 else level, n, width) != path.strip("/"):
        return None
    return ref


def bundle(entries: list[bytes]) -> bytes:
    """An entry bundle: each entry prefixed with its length (big-endian uint16)."""
    return b"".join(len(e).to_bytes(2, "big") + e for e in entries)


def parse_bundle(data: bytes, expected: int, path: str) -> list[bytes]:
    """The entries of a bundle, which must hold exactly ``expected`` of them."""
    out: list[bytes] = []
    at, end = 0, len(data)
    while at < end:
        if at + 2 > end:
            raise InputError(f"{path} is truncated (a length cut in half)", _HINT_TILES)
        size = int.from_bytes(data[at : at + 2], "big")
        if at + 2 + size > end:
            raise InputError(f"{path} is truncated (entry {len(out)} is cut)", _HINT_TILES)
        out.append(data[at + 2 : at + 2 + size])
        at += 2 + size
    if len(out) != expected:
        raise InputError(f"{path} holds {len(out)} entries, not {expected}", _HINT_TILES)
    return out


_HINT_TILES = "fetch the tiles again from the log, or export them again; if it persists, " \
              "the log serves damaged tiles"


def tiles_for(size: int) -> Iterator[TileRef]:
    """Every tile (entry bundles included) of the tree of ``size`` entries, as a client
    at that size reads them: full tiles, then the partial one of each level."""
    level = 0
    count = size
    while count > 0 and level < _MAX_LEVELS:
        full, rest = divmod(count, TILE_WIDTH)
        for n in range(full):
            if level == 0:
                yield TileRef(-1, n, TILE_WIDTH)
            yield TileRef(level, n, TILE_WIDTH)
        if rest:
            if level == 0:
                yield TileRef(-1, full, rest)
            yield TileRef(level, full, rest)
        level += 1
        count >>= 8


# ---------------------------------------------------------------------------- from the store
class LedgerTiles:
    """Tiles read from the stored ledger (what `audit serve` and `audit tiles` give out)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def read(self, path: str) -> bytes | None:
        ref = parse_tile_path(path)
        if ref is None:
            return None
        start, end = ref.n * TILE_WIDTH, ref.n * TILE_WIDTH + ref.width
        if ref.level < 0:
            entries = self.ledger.entries_range(start, end)
            return bundle(entries) if len(entries) == ref.width else None
        hashes = (self.ledger.leaf_range(start, end) if ref.level == 0
                  else self.ledger.tile_nodes(ref.level, start, end))
        return b"".join(hashes) if len(hashes) == ref.width else None

    def checkpoint(self) -> bytes | None:
        note = self.ledger.published_checkpoint()
        return None if note is None else note.encode()


def export_tiles(ledger: Ledger, checkpoint_note: str, size: int, out: Path) -> int:
    """Write the checkpoint and every tile of the tree of ``size`` entries under ``out``;
    full tiles already there are kept (they never change). Returns the files written."""
    source = LedgerTiles(ledger)
    written = 0
    for ref in tiles_for(size):
        path = tile_path("entries" if ref.level < 0 else ref.level, ref.n, ref.width)
        target = out / path
        if ref.width == TILE_WIDTH and target.exists():
            continue
        data = source.read(path)
        if data is None:
            raise InputError(f"the ledger cannot give {path} for a tree of {size} entries",
                             "run `help-exchange audit verify`: tiles are missing")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        written += 1
    (out / "checkpoint").write_text(checkpoint_note, encoding="utf-8")
    return written + 1


# ---------------------------------------------------------------------------- readers
def directory_reader(root: Path) -> TileReader:
    def read(path: str) -> bytes | None:
        target = root / path
        try:
            return target.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"cannot read {target}: {exc.strerror}",
                             "give the folder written by `help-exchange audit tiles`") from exc
    return read


def http_reader(base_url: str, timeout: float = 10.0) -> TileReader:
    base = base_url.rstrip("/") + "/"
    if not base.startswith(("http://", "https://")):
        raise InputError(f"{base_url!r} is not an http(s) URL", "give e.g. http://host:8081/")

    def read(path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as response:
                data: bytes = response.read(1 << 24)
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise InputError(f"{base + path}: HTTP {exc.code}", "check the log's URL") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise InputError(f"cannot fetch {base + path}: {exc}",
                             "check the log's URL and that it is up") from exc
    return read


# ---------------------------------------------------------------------------- verification
@dataclass
class TileAudit:
    """What :func:`verify_from_tiles` found."""

    size: int
    root: bytes = b""
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    first_bad: int | None = None
    bad_range: tuple[int, int] | None = None
    leaves: list[bytes] = field(default_factory=list, repr=False)

    def fail(self, what: str, index: int | None = None,
             bad_range: tuple[int, int] | None = None) -> None:
        self.problems.append(what)
        if index is not None and self.first_bad is None:
            self.first_bad = index
        if bad_range is not None and self.bad_range is None:
            self.bad_range = bad_range


def verify_from_tiles(read: TileReader, checkpoint: Checkpoint, *,
                      trusted: tuple[Checkpoint, ...] = (),
                      kept: tuple[TileReader, int] | None = None,
                      keep_leaves: bool = False) -> TileAudit:
    """Check every entry and tile of the tree of ``checkpoint`` (already signature-checked)
    against it: each bundle's entries hash to the level-0 tile, each level's tiles hold the
    subtree roots recomputed from the entries, and the recomputed root is the checkpoint's.
    ``trusted`` (smaller checkpoints the auditor kept) and ``kept`` (tiles the auditor
    exported earlier, with the size they were exported at) narrow where a rewrite is: to
    the entry with ``kept``, else to the range between the checkpoints that still match."""
    audit = TileAudit(checkpoint.size)
    acc = CompactRange()
    nodes: list[tuple[int, int, bytes]] = []
    pins = sorted((c for c in trusted if c.size <= checkpoint.size), key=lambda c: c.size)
    pin_at = 0
    last_good = 0
    size = checkpoint.size
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        bpath = tile_path("entries", n, width)
        tpath = tile_path(0, n, width)
        raw = read(bpath)
        if raw is None:
            audit.fail(f"{bpath} is missing", n * TILE_WIDTH)
            return audit
        entries = parse_bundle(raw, width, bpath)
        leaves = [leaf_hash(e) for e in entries]
        tile = read(tpath)
        if tile is None or len(tile) != width * HASH:
            audit.fail(f"{tpath} is missing or truncated ({0 if tile is None else len(tile)} "
                       f"bytes, {width * HASH} expected)", n * TILE_WIDTH)
            return audit
        joined = b"".join(leaves)
        if joined != tile:
            i = next(i for i in range(width) if tile[i * HASH:(i + 1) * HASH] != leaves[i])
            audit.fail(f"entry n° {n * TILE_WIDTH + i}: its bytes in {bpath} do not hash to "
                       f"its leaf hash in {tpath}", n * TILE_WIDTH + i)
        if kept is not None and n * TILE_WIDTH < kept[1]:
            old = kept[0](tile_path(0, n, min(TILE_WIDTH, kept[1] - n * TILE_WIDTH)))
            if old is not None:
                common = min(len(old), len(tile)) // HASH
                for i in range(common):
                    if old[i * HASH:(i + 1) * HASH] != leaves[i]:
                        audit.fail(f"entry n° {n * TILE_WIDTH + i} differs from the copy the "
                                   "auditor kept: rewritten", n * TILE_WIDTH + i)
                        break
        if keep_leaves:
            audit.leaves.extend(leaves)
        for leaf in leaves:
            acc.append_noting(leaf, nodes)
            while pin_at < len(pins) and pins[pin_at].size == acc.size:
                if acc.root() == pins[pin_at].root:
                    last_good = acc.size
                else:
                    audit.fail(f"the tree of {acc.size} entries is not the one of the "
                               f"checkpoint the auditor kept: one of entries n° {last_good} "
                               f"to n° {acc.size - 1} was rewritten", None,
                               (last_good, acc.size - 1))
                pin_at += 1
    if pins and pins[0].size == 0 and pins[0].root != acc.root():  # pragma: no cover
        audit.fail("the empty tree's root differs")
    _check_upper_levels(read, size, nodes, audit)
    audit.root = acc.root()
    if audit.root != checkpoint.root:
        audit.fail(f"the entries recompute the root {audit.root.hex()[:16]}…, not the "
                   f"checkpoint's: one of entries n° {last_good} to n° {size - 1} was "
                   "rewritten", None, (last_good, size - 1))
    audit.ok = not audit.problems
    return audit


def _check_upper_levels(read: TileReader, size: int, nodes: list[tuple[int, int, bytes]],
                        audit: TileAudit) -> None:
    by_level: dict[int, list[bytes]] = {}
    for level, _, digest in nodes:
        by_level.setdefault(level, []).append(digest)
    level = 1
    count = size >> 8
    while count > 0:
        hashes = by_level.get(level, [])
        for n in range((count + TILE_WIDTH - 1) // TILE_WIDTH):
            width = min(TILE_WIDTH, count - n * TILE_WIDTH)
            path = tile_path(level, n, width)
            tile = read(path)
            expected = b"".join(hashes[n * TILE_WIDTH : n * TILE_WIDTH + width])
            if tile is None or len(tile) != width * HASH:
                audit.fail(f"{path} is missing or truncated")
            elif tile != expected:
                i = next(i for i in range(width)
                         if tile[i * HASH:(i + 1) * HASH] != expected[i * HASH:(i + 1) * HASH])
                first = (n * TILE_WIDTH + i) << (8 * level)
                audit.fail(f"{path} does not hold the subtree roots of the entries (entries "
                           f"n° {first} to n° {first + (1 << 8 * level) - 1})", None,
                           (first, first + (1 << 8 * level) - 1))
        level += 1
        count >>= 8


# ---------------------------------------------------------------------------- HTTP
class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "help-exchange-tiles"
    tiles: LedgerTiles

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_POST(self) -> None:
        self.send_error(405, "read-only: GET or HEAD")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        if path == "checkpoint":
            data = self.tiles.checkpoint()
            kind, cache = "text/plain; charset=utf-8", "no-cache"
        else:
            ref = parse_tile_path(path)
            data = None if ref is None else self.tiles.read(path)
            kind = "application/octet-stream"
            cache = ("public, max-age=31536000, immutable"
                     if ref is not None and ref.width == TILE_WIDTH else "no-cache")
        if data is None:
            self.send_error(404, "no such tile or checkpoint")
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the paths are public, but the console is not a log."""


def tile_server(ledger: Ledger, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """A read-only HTTP server of the ledger's checkpoint and tiles (not started)."""
    handler = type("TileHandler", (_Handler,), {"tiles": LedgerTiles(ledger)})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="tiles", daemon=True)
    thread.start()
    return thread
