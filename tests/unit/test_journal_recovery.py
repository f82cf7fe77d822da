"""Salvage of a damaged journal: whatever page a bad sector hits, only the readings stored on that page are lost,
and nothing that was not an unsent reading comes back (garbage, or readings already sent and deleted).

Pages are located with SQLite's dbstat table (Debian's libsqlite3 has it), so each test damages the kind of page
it names: a leaf of the reading table, or an interior page above its leaves.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from agent.gateway import journal_recovery
from agent.gateway.journal import Journal
from agent.gateway.journal_recovery import salvage, salvage_chunks
from agent.gateway.reading import SOS, TELEMETRY, Entry

ROWS = 8000  # small readings: with 1 KiB pages the reading table is three levels deep


def entry(i: int) -> Entry:
    lane = SOS if i % 97 == 0 else TELEMETRY
    return Entry(lane, f"{i % 50:08x}", i, 1_764_000_000_000_000 + i, json.dumps({"v": i}, separators=(",", ":")))


def pages(path: Path, kind: str) -> dict[int, int]:
    """{page number: cells} of the reading table's pages of a kind ('leaf' or 'internal')."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT pageno, ncell FROM dbstat WHERE name='reading' AND pagetype=?", (kind,)))
    finally:
        db.close()


def overwrite(path: Path, number: int, data: bytes) -> None:
    db = sqlite3.connect(path)
    try:
        size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    with path.open("r+b") as f:
        f.seek((number - 1) * size)
        f.write(data[:size].ljust(size, b"\0"))


def key(e: Entry) -> tuple[int, str, int, int, str]:
    return (e.lane, e.node, e.fcnt, e.ts_us, e.body)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("written") / "j.db"
    j = Journal(path, quota_bytes=1 << 30)
    try:
        j.commit(entries=[entry(i) for i in range(1, ROWS + 1)])
    finally:
        j.close()
    return path


@pytest.fixture
def journal_file(tmp_path: Path, written: Path) -> Path:
    """A closed journal holding ROWS unsent readings, each test its own copy."""
    shutil.copyfile(written, tmp_path / "j.db")
    return tmp_path / "j.db"


def test_a_damaged_interior_page_of_the_reading_table_costs_no_reading(journal_file: Path) -> None:
    interior = sorted(pages(journal_file, "internal"))
    assert len(interior) >= 2, "the table must have interior pages below its root for this test"
    overwrite(journal_file, interior[1], random.Random(1).randbytes(4096))
    db = sqlite3.connect(f"file:{journal_file}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.DatabaseError):  # SQLite itself cannot reach the leaves under it
            db.execute("SELECT SUM(LENGTH(body)) FROM reading").fetchall()
    finally:
        db.close()
    got = salvage(str(journal_file))
    assert sorted(key(e) for e in got) == sorted(key(entry(i)) for i in range(1, ROWS + 1))  # all, once, unchanged


def test_a_damaged_leaf_costs_exactly_the_readings_on_it(journal_file: Path) -> None:
    leaves = pages(journal_file, "leaf")
    victim = sorted(leaves)[len(leaves) // 2]
    overwrite(journal_file, victim, random.Random(2).randbytes(4096))
    got = [key(e) for e in salvage(str(journal_file))]
    everything = [key(entry(i)) for i in range(1, ROWS + 1)]
    kept = set(got)
    assert len(got) == len(kept) == ROWS - leaves[victim]
    assert kept <= set(everything)  # nothing changed
    lost = [k[2] for k in everything if k not in kept]
    assert lost == list(range(lost[0], lost[0] + leaves[victim]))  # one run of neighbours: the victim page's rows


def test_readings_already_sent_never_come_back_from_freed_pages(tmp_path: Path, journal_file: Path) -> None:
    # A build without secure_delete (Debian's has it) leaves the cells of freed pages in place.
    db = sqlite3.connect(journal_file)
    db.execute("PRAGMA secure_delete=OFF")
    db.execute("DELETE FROM reading WHERE seq <= ?", (ROWS - 100,))  # sent and acknowledged
    db.commit()
    freed = db.execute("PRAGMA freelist_count").fetchone()[0]
    db.close()
    assert freed > 10
    assert b'{"v":1000}' in journal_file.read_bytes()  # the old cells are still in the file
    interior = sorted(pages(journal_file, "internal"))
    if interior:
        overwrite(journal_file, interior[0], b"\xff" * 4096)
    got = salvage(str(journal_file))
    assert [e.fcnt for e in got] == list(range(ROWS - 99, ROWS + 1))


def test_readings_committed_only_to_the_wal_are_salvaged(tmp_path: Path, journal_file: Path) -> None:
    writer = sqlite3.connect(journal_file)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO reading (seq, lane, node, fcnt, ts_us, body) VALUES (?, ?, ?, ?, ?, ?)",
                   (ROWS + 1, SOS, "0000beef", 1, 1_764_000_000_000_000, '{"sos":true}'))
    writer.commit()
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal"):  # as a power cut leaves it: the commit is in the WAL only
        shutil.copyfile(f"{journal_file}{suffix}", copy / f"j.db{suffix}")
    writer.close()
    assert (copy / "j.db-wal").stat().st_size > 0
    got = salvage(str(copy / "j.db"))
    assert len(got) == ROWS + 1 and key(got[-1]) == (SOS, "0000beef", 1, 1_764_000_000_000_000, '{"sos":true}')


@pytest.mark.parametrize("seed", range(12))
def test_garbage_on_any_page_never_becomes_a_reading(tmp_path: Path, journal_file: Path, seed: int) -> None:
    """Whole pages of garbage, some dressed as table leaves with cell pointers into random bytes."""
    rng = random.Random(seed)
    total = journal_file.stat().st_size // 1024  # 1 KiB pages
    originals = {key(entry(i)) for i in range(1, ROWS + 1)}
    for number in rng.sample(range(2, total + 1), 6):
        junk = bytearray(rng.randbytes(1024))
        if rng.random() < 0.5:
            junk[0] = 0x0D  # a table leaf's type byte
            junk[3:5] = (40).to_bytes(2, "big")
        overwrite(journal_file, number, bytes(junk))
    got = salvage(str(journal_file))
    assert {key(e) for e in got} <= originals
    assert len(got) == len({e.fcnt for e in got})


def test_salvage_comes_in_bounded_chunks_oldest_first(journal_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_recovery, "CHUNK", 700)
    interior = sorted(pages(journal_file, "internal"))
    overwrite(journal_file, interior[1], b"\0" * 4096)  # what SQLite cannot reach comes from the page pass
    chunks = list(salvage_chunks(str(journal_file)))
    assert all(0 < len(c) <= 700 for c in chunks) and len(chunks) >= ROWS // 700
    got = [e.fcnt for c in chunks for e in c]
    assert sorted(got) == list(range(1, ROWS + 1))  # every reading once
    assert got != sorted(got)  # the page pass's rows come after SQLite's
    assert all([e.fcnt for e in c] == sorted(e.fcnt for e in c) for c in chunks)  # oldest first within a chunk


def test_sent_readings_deleted_in_the_wal_stay_deleted_while_another_connection_holds_it(journal_file: Path) -> None:
    """A reader (``denen status``, an operator's sqlite3 shell) keeps the WAL from being checkpointed: the main file
    still holds readings the WAL has deleted, and the page pass must read the WAL's copy of those pages."""
    reader = sqlite3.connect(journal_file)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM reading").fetchone()  # pins the snapshot before the deletion
    writer = sqlite3.connect(journal_file)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("DELETE FROM reading WHERE seq <= 100")  # sent and acknowledged, SOS 97 among them
    writer.commit()
    writer.close()
    size_before = journal_file.stat().st_size
    main_before = journal_file.read_bytes()
    try:
        leaves = sorted(pages(journal_file, "leaf"))
        overwrite(journal_file, leaves[-1], b"\xff" * 4096)
        main_damaged = journal_file.read_bytes()
        got = salvage(str(journal_file))
    finally:
        reader.close()
    assert not [e.fcnt for e in got if e.fcnt <= 100]
    assert len(got) >= ROWS - 100 - max(pages(journal_file, "leaf").values())
    assert len(main_damaged) == size_before and main_before != main_damaged  # salvage itself wrote nothing


def test_a_body_nested_deeper_than_the_json_parser_goes_is_not_a_reading(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path, quota_bytes=1 << 30)
    try:
        j.commit(entries=[entry(1), Entry(TELEMETRY, "0000dead", 2, 1, "[" * 100_000 + "]" * 100_000), entry(3)])
    finally:
        j.close()
    assert [e.fcnt for e in salvage(str(path))] == [1, 3]


def test_a_seq_near_two_to_the_63_on_a_damaged_tree_ends_the_sqlite_pass_quickly(journal_file: Path) -> None:
    db = sqlite3.connect(journal_file)
    db.execute("INSERT INTO reading (seq, lane, node, fcnt, ts_us, body) VALUES (?, ?, 'x', 1, 1, '{}')",
               ((1 << 62) + 5, TELEMETRY))
    db.commit()
    db.close()
    interior = sorted(pages(journal_file, "internal"))
    overwrite(journal_file, interior[1], b"\0" * 4096)
    started = time.monotonic()
    got = salvage(str(journal_file))
    assert time.monotonic() - started < 20
    assert len(got) == ROWS + 1


def test_an_overflow_chain_that_loops_or_leaves_the_file_costs_only_its_cell(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path, quota_bytes=1 << 30)
    try:  # bodies larger than a page spill into overflow pages
        j.commit(entries=[Entry(TELEMETRY, "0000beef", i, i, json.dumps({"pad": "x" * 3000, "i": i}))
                          for i in range(1, 41)])
    finally:
        j.close()
    overflow = sorted(pages(path, "overflow"))
    assert overflow
    data = bytearray(path.read_bytes())
    size = 1024
    first = overflow[0]
    data[(first - 1) * size: (first - 1) * size + 4] = first.to_bytes(4, "big")  # points at itself
    second = overflow[5]
    data[(second - 1) * size: (second - 1) * size + 4] = (10**6).to_bytes(4, "big")  # past the end of the file
    path.write_bytes(bytes(data))
    started = time.monotonic()
    got = salvage(str(path))
    assert time.monotonic() - started < 10
    assert 30 <= len(got) < 40 and all(json.loads(e.body)["pad"] == "x" * 3000 for e in got)


def test_open_or_recover_commits_each_chunk_before_reading_the_next(
        journal_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.gateway.journal import open_or_recover

    monkeypatch.setattr(journal_recovery, "CHUNK", 1000)
    sizes: list[int] = []
    commit = Journal.commit

    def counting(self: Journal, **kw: object) -> object:
        sizes.append(len(kw.get("entries", ())))  # type: ignore[arg-type]
        return commit(self, **kw)

    monkeypatch.setattr(Journal, "commit", counting)
    overwrite(journal_file, sorted(pages(journal_file, "internal"))[1], b"\0" * 4096)
    journal, aside, rescued = open_or_recover(str(journal_file), quota_bytes=1 << 30)
    try:
        assert aside and rescued == ROWS
        assert sizes and max(sizes) <= 1000 and sum(sizes) == ROWS
        assert sum(journal.depth().values()) == ROWS
    finally:
        journal.close()


def test_the_journal_zeroes_what_it_deletes(tmp_path: Path) -> None:
    """secure_delete on every build, not only Debian's: a sent reading's bytes leave the file, so no salvage can
    bring it back."""
    from agent.gateway.journal_schema import configure

    db = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    try:
        db.execute("PRAGMA secure_delete=OFF")  # as on a build without SQLITE_SECURE_DELETE
        configure(db)
        assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        db.close()
    path = tmp_path / "k.db"
    j = Journal(path, quota_bytes=1 << 30)
    try:
        j.commit(entries=[Entry(SOS, "0000beef", i, i, json.dumps({"sent": f"marker-{i:04d}"})) for i in range(1, 301)])
        j.commit(acked=range(1, 301))
    finally:
        j.close()
    files = [p for p in (path, tmp_path / "k.db-wal") if p.exists()]
    assert b"marker-0" not in b"".join(p.read_bytes() for p in files)
