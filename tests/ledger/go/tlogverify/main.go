// tlogverify checks a help-exchange ledger the way any outside auditor can: with Go's own
// golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog (RFC 6962
// trees, proofs and tiles), code not written by the project. It is built offline in GOPATH
// mode against Debian's golang-golang-x-mod-dev (see tests/ledger/test_go_verifier.py).
//
//	tlogverify -url http://127.0.0.1:8081/ -log 'origin+hash+key' [-witness vkey]...
//	           [-quorum N] [-old CHECKPOINT_FILE]... [-all] [PROOF.json ...]
//
// It fetches /checkpoint, checks the log's signature and the witnesses' cosignatures
// (tlog-cosignature/v1), then reads tiles over HTTP through tlog.TileHashReader (which
// authenticates every tile against the checkpoint's root), proves and checks the inclusion
// of every entry (-all), the consistency with each older checkpoint (-old), and checks the
// proof files the ledger wrote (inclusion, consistency, access report). Exit 1 on any failure.
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// cosigV1 verifies C2SP tlog-cosignature/v1 lines through note.Open: the note package
// dispatches on (name, key hash); the signed message is defined by the cosignature spec.
type cosigV1 struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func (c *cosigV1) Name() string    { return c.name }
func (c *cosigV1) KeyHash() uint32 { return c.hash }
func (c *cosigV1) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	ts := binary.BigEndian.Uint64(sig[:8])
	signed := []byte(fmt.Sprintf("cosignature/v1\ntime %d\n", ts))
	return ed25519.Verify(c.key, append(signed, msg...), sig[8:])
}

func newCosigVerifier(vkey string) (*cosigV1, error) {
	parts := strings.SplitN(strings.TrimSpace(vkey), "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("malformed witness key %q", vkey)
	}
	h, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 33 || raw[0] != 0x04 {
		return nil, fmt.Errorf("witness key %q is not a cosignature/v1 key", parts[0])
	}
	sum := sha256.Sum256(append([]byte(parts[0]+"\n"), raw...))
	if binary.BigEndian.Uint32(sum[:4]) != uint32(h) {
		return nil, fmt.Errorf("witness key %q: key hash mismatch", parts[0])
	}
	return &cosigV1{parts[0], uint32(h), ed25519.PublicKey(raw[1:])}, nil
}

type checkpoint struct {
	origin    string
	tree      tlog.Tree
	cosigners []string
}

func openCheckpoint(msg []byte, logV note.Verifier, witnesses []note.Verifier, quorum int) (*checkpoint, error) {
	n, err := note.Open(msg, note.VerifierList(append([]note.Verifier{logV}, witnesses...)...))
	if err != nil {
		return nil, err
	}
	var signedByLog bool
	cp := &checkpoint{}
	for _, s := range n.Sigs {
		if s.Name == logV.Name() && s.Hash == logV.KeyHash() {
			signedByLog = true
		} else {
			cp.cosigners = append(cp.cosigners, s.Name)
		}
	}
	if !signedByLog {
		return nil, errors.New("checkpoint not signed by the log")
	}
	if len(cp.cosigners) < quorum {
		return nil, fmt.Errorf("checkpoint cosigned by %d witnesses %v, quorum is %d", len(cp.cosigners), cp.cosigners, quorum)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != logV.Name() {
		return nil, fmt.Errorf("not a checkpoint of %s", logV.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return nil, fmt.Errorf("bad size line %q", lines[1])
	}
	h, err := tlog.ParseHash(lines[2])
	if err != nil {
		return nil, err
	}
	cp.origin, cp.tree = lines[0], tlog.Tree{N: size, Hash: h}
	return cp, nil
}

// tiles reads C2SP tlog-tiles over HTTP: Go's tile path is tile/8/L/N, C2SP's tile/L/N.
type tiles struct{ base string }

func (t *tiles) get(path string) ([]byte, error) {
	resp, err := http.Get(t.base + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func c2spPath(tile tlog.Tile) string {
	return strings.Replace(tile.Path(), "tile/8/", "tile/", 1)
}

func (t *tiles) Height() int { return 8 }
func (t *tiles) ReadTiles(list []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(list))
	for i, tile := range list {
		data, err := t.get(c2spPath(tile))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}
func (t *tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func (t *tiles) entries(size int64) ([][]byte, error) {
	var all [][]byte
	for n := int64(0); n*256 < size; n++ {
		w := size - n*256
		if w > 256 {
			w = 256
		}
		tile := tlog.Tile{H: 8, L: 0, N: n, W: int(w)}
		path := "tile/entries/" + strings.TrimPrefix(c2spPath(tile), "tile/0/")
		data, err := t.get(path)
		if err != nil {
			return nil, err
		}
		for len(data) > 0 {
			if len(data) < 2 {
				return nil, fmt.Errorf("%s: truncated", path)
			}
			l := int(binary.BigEndian.Uint16(data))
			if len(data) < 2+l {
				return nil, fmt.Errorf("%s: truncated", path)
			}
			all = append(all, data[2:2+l])
			data = data[2+l:]
		}
	}
	if int64(len(all)) != size {
		return nil, fmt.Errorf("entry bundles hold %d entries, not %d", len(all), size)
	}
	return all, nil
}

func b64u(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func hashes(list []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(list))
	for i, s := range list {
		b, err := b64u(s)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("bad hash %q", s)
		}
		copy(out[i][:], b)
	}
	return out, nil
}

type inclusionDoc struct {
	Format     string   `json:"format"`
	LeafData   string   `json:"leaf_data"`
	LeafIndex  int64    `json:"leaf_index"`
	TreeSize   int64    `json:"tree_size"`
	Path       []string `json:"inclusion_path"`
	Checkpoint string   `json:"checkpoint"`
}

type side struct {
	TreeSize   int64  `json:"tree_size"`
	Checkpoint string `json:"checkpoint"`
}

type proofDoc struct {
	inclusionDoc
	First  *side          `json:"first"`
	Second *side          `json:"second"`
	CPath  []string       `json:"consistency_path"`
	Events []inclusionDoc `json:"events"`
}

func checkInclusion(d inclusionDoc, logV note.Verifier, ws []note.Verifier, quorum int) error {
	cp, err := openCheckpoint([]byte(d.Checkpoint), logV, ws, quorum)
	if err != nil {
		return fmt.Errorf("checkpoint: %v", err)
	}
	if cp.tree.N != d.TreeSize {
		return fmt.Errorf("proof for a tree of %d, checkpoint of %d", d.TreeSize, cp.tree.N)
	}
	data, err := b64u(d.LeafData)
	if err != nil {
		return err
	}
	p, err := hashes(d.Path)
	if err != nil {
		return err
	}
	return tlog.CheckRecord(p, cp.tree.N, cp.tree.Hash, d.LeafIndex, tlog.RecordHash(data))
}

func checkFile(path string, logV note.Verifier, ws []note.Verifier, quorum int) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var d proofDoc
	if err := json.Unmarshal(raw, &d); err != nil {
		return "", err
	}
	switch {
	case len(d.Events) > 0:
		for i, e := range d.Events {
			if err := checkInclusion(e, logV, ws, quorum); err != nil {
				return "", fmt.Errorf("event %d: %v", i, err)
			}
		}
		return fmt.Sprintf("access report: %d events proven", len(d.Events)), nil
	case d.First != nil && d.Second != nil:
		a, err := openCheckpoint([]byte(d.First.Checkpoint), logV, ws, quorum)
		if err != nil {
			return "", fmt.Errorf("first checkpoint: %v", err)
		}
		b, err := openCheckpoint([]byte(d.Second.Checkpoint), logV, ws, quorum)
		if err != nil {
			return "", fmt.Errorf("second checkpoint: %v", err)
		}
		p, err := hashes(d.CPath)
		if err != nil {
			return "", err
		}
		if err := tlog.CheckTree(p, b.tree.N, b.tree.Hash, a.tree.N, a.tree.Hash); err != nil {
			return "", err
		}
		return fmt.Sprintf("consistency %d -> %d", a.tree.N, b.tree.N), nil
	default:
		if err := checkInclusion(d.inclusionDoc, logV, ws, quorum); err != nil {
			return "", err
		}
		return fmt.Sprintf("inclusion of entry %d in %d", d.LeafIndex, d.TreeSize), nil
	}
}

func main() {
	url := flag.String("url", "", "base URL of the tiles")
	logKey := flag.String("log", "", "the log's verifier key")
	quorum := flag.Int("quorum", 0, "cosignatures required")
	all := flag.Bool("all", false, "prove the inclusion of every entry from the tiles")
	var witnessKeys, olds multi
	flag.Var(&witnessKeys, "witness", "a witness's cosignature/v1 verifier key (repeat)")
	flag.Var(&olds, "old", "an older checkpoint file to prove consistency with (repeat)")
	flag.Parse()
	fail := func(format string, a ...any) {
		fmt.Printf("FAIL: "+format+"\n", a...)
		os.Exit(1)
	}
	logV, err := note.NewVerifier(*logKey)
	if err != nil {
		fail("log key: %v", err)
	}
	var ws []note.Verifier
	for _, k := range witnessKeys {
		v, err := newCosigVerifier(k)
		if err != nil {
			fail("%v", err)
		}
		ws = append(ws, v)
	}
	if *url != "" {
		t := &tiles{base: strings.TrimSuffix(*url, "/") + "/"}
		msg, err := t.get("checkpoint")
		if err != nil {
			fail("%v", err)
		}
		cp, err := openCheckpoint(msg, logV, ws, *quorum)
		if err != nil {
			fail("checkpoint: %v", err)
		}
		fmt.Printf("checkpoint ok: %s size %d cosigned by %v\n", cp.origin, cp.tree.N, cp.cosigners)
		hr := tlog.TileHashReader(cp.tree, t)
		th, err := tlog.TreeHash(cp.tree.N, hr)
		if err != nil || th != cp.tree.Hash {
			fail("tree hash from tiles: %v", err)
		}
		if *all {
			entries, err := t.entries(cp.tree.N)
			if err != nil {
				fail("%v", err)
			}
			for i, e := range entries {
				p, err := tlog.ProveRecord(cp.tree.N, int64(i), hr)
				if err != nil {
					fail("prove entry %d: %v", i, err)
				}
				if err := tlog.CheckRecord(p, cp.tree.N, cp.tree.Hash, int64(i), tlog.RecordHash(e)); err != nil {
					fail("entry %d: %v", i, err)
				}
			}
			fmt.Printf("inclusion ok: %d entries\n", len(entries))
		}
		for _, f := range olds {
			msg, err := os.ReadFile(f)
			if err != nil {
				fail("%v", err)
			}
			old, err := openCheckpoint(msg, logV, nil, 0)
			if err != nil {
				fail("old checkpoint %s: %v", f, err)
			}
			if old.tree.N > cp.tree.N {
				fail("old checkpoint %d is larger than the log (%d): rolled back", old.tree.N, cp.tree.N)
			}
			if old.tree.N > 0 {
				p, err := tlog.ProveTree(cp.tree.N, old.tree.N, hr)
				if err != nil {
					fail("prove consistency %d: %v", old.tree.N, err)
				}
				if err := tlog.CheckTree(p, cp.tree.N, cp.tree.Hash, old.tree.N, old.tree.Hash); err != nil {
					fail("consistency %d -> %d: %v (fork)", old.tree.N, cp.tree.N, err)
				}
			}
			fmt.Printf("consistency ok: %d -> %d\n", old.tree.N, cp.tree.N)
		}
	}
	for _, f := range flag.Args() {
		what, err := checkFile(f, logV, ws, *quorum)
		if err != nil {
			fail("%s: %v", f, err)
		}
		fmt.Printf("proof ok: %s\n", what)
	}
	fmt.Println("ALL OK")
}
