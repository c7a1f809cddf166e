"""A dated full snapshot read against the previous export's file: only what differs is staged, and the
ledger ends exactly as when the whole file is staged."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest
from loader_files import INVOICE_LINES, generate, invoice, settle, snapshot, write

from data_platform import snapshot_diff, staging
from data_platform.file_checksums import KnownFile
from data_platform.loader import LoadError, load_exports

DAY = "2024-06-29"


# --- the diff on its own ----------------------------------------------------------------------------


def diff(
    tmp_path: Path,
    previous: list[str],
    new: list[str],
    *,
    share: float = 1.0,
    chunk: int = 16,
    newline: str = "\n",
    final_newline: bool = True,
) -> tuple[list[str], snapshot_diff.Differences]:
    """The lines sent for `new` against `previous` (with header A,B). Small chunks, so that the files
    are compared over many; by default any share of these tiny files may differ."""
    header = "A,B" + newline
    old_path = write(tmp_path / "old.csv", ["A,B", *previous], newline=newline)
    new_path = write(tmp_path / "new.csv", ["A,B", *new], newline=newline, final_newline=final_newline)
    sent: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot_diff, "MAX_DIFFERING_SHARE", share)
        patch.setattr(snapshot_diff, "CHUNK_BYTES", chunk)
        found = snapshot_diff.send_differences(
            sent.append, new_path, len(header), known(old_path), len(header), block_size=64
        )
    return b"".join(sent).decode().splitlines(), found


def known(path: Path, sha256: str | None = None) -> KnownFile:
    stat = path.stat()
    return KnownFile(
        path,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
        sha256 or hashlib.sha256(path.read_bytes()).hexdigest(),
    )


ROWS = [f"{n},value {n}" for n in range(1, 400)]


@pytest.mark.parametrize("chunk", [16, 64 * 1024])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_records_equal_to_the_previous_files_are_not_sent_and_each_other_is_sent_with_its_number(
    tmp_path, chunk, newline
):
    new = list(ROWS)
    new[10] = "11,changed"  # changed where it stood
    new.insert(200, "9001,new in the middle")
    del new[300]  # absent from the new file
    new.append("9002,new at the end")
    sent, found = diff(tmp_path, ROWS, new, chunk=chunk, newline=newline)
    assert sent == ["11,11,changed", "201,9001,new in the middle", "400,9002,new at the end"]
    assert (found.records, found.differing) == (len(new), 3)
    assert found.replaced_ids == [11, 300]  # the changed one's and the absent one's previous records
    assert found.sha256 == hashlib.sha256((tmp_path / "new.csv").read_bytes()).hexdigest()


def test_a_record_moved_further_on_is_found_and_a_repeated_one_is_sent(tmp_path):
    new = list(ROWS)
    moved = new.pop(5)
    new.insert(40, moved)
    new.insert(100, ROWS[99])  # the same record twice: the second cannot match
    sent, found = diff(tmp_path, ROWS, new)
    assert sent == [f"101,{ROWS[99]}"]  # record 101, the second of the two
    assert found.replaced_ids == []


def test_a_record_passed_over_then_met_among_new_ones_is_matched_not_sent(tmp_path):
    # record 1 is passed over (taken as gone) at record 2, then met again after a new record
    new = [ROWS[1], "9001,new", ROWS[0], *ROWS[2:]]
    sent, found = diff(tmp_path, ROWS, new)
    assert sent == ["2,9001,new"]
    assert found.replaced_ids == []


@pytest.mark.parametrize("at", [0, 150])
def test_a_run_of_new_records_is_sent_without_losing_step(tmp_path, monkeypatch, at):
    added = [f"{9000 + n},new" for n in range(100)]  # as a newest-first export puts a day's invoices
    monkeypatch.setattr(snapshot_diff, "MAX_UNMATCHED", 10)  # fewer than the records after the run
    sent, found = diff(tmp_path, ROWS, [*ROWS[:at], *added, *ROWS[at:]])
    assert sent == [f"{at + n + 1},{record}" for n, record in enumerate(added)]
    assert found.replaced_ids == []


def test_swapped_blocks_are_found_in_either_file(tmp_path):
    new = [*ROWS[:50], *ROWS[200:300], *ROWS[50:200], *ROWS[300:]]
    sent, found = diff(tmp_path, ROWS, new)
    assert (sent, found.replaced_ids) == ([], [])


def test_records_too_far_out_of_step_to_find_are_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot_diff, "SEARCH_BYTES", (64,))
    shuffled = list(ROWS)
    random.Random(1).shuffle(shuffled)
    with pytest.raises(snapshot_diff.NotAlike, match="too far out of step"):
        diff(tmp_path, ROWS, shuffled)


def test_a_run_of_gone_previous_records_does_not_lose_step(tmp_path):
    new = [*ROWS[:100], *ROWS[250:]]  # 150 records gone
    sent, found = diff(tmp_path, ROWS, new)
    assert sent == []
    assert found.replaced_ids == list(range(101, 251))


def test_a_record_moved_back_further_than_a_search_is_sent_and_its_old_place_left_unmatched(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(snapshot_diff, "SEARCH_BYTES", (256,))
    new = list(ROWS)
    new.insert(3, new.pop(300))
    sent, found = diff(tmp_path, ROWS, new)
    assert sent == [f"4,{ROWS[300]}"]
    assert found.replaced_ids == [301]


def test_previous_records_after_the_new_files_end_are_unmatched(tmp_path):
    sent, found = diff(tmp_path, ROWS, ROWS[:390])
    assert sent == []
    assert found.replaced_ids == list(range(391, 400))


def test_a_last_line_without_newline_still_counts(tmp_path):
    sent, found = diff(tmp_path, ROWS, [*ROWS, "9003,last"], final_newline=False)
    assert sent == ["400,9003,last"]
    assert found.records == 400


def test_a_last_line_without_newline_is_sent_with_the_files_line_ending(tmp_path):
    sent: list[bytes] = []
    old_path = write(tmp_path / "old.csv", ["A,B", *ROWS], newline="\r\n")
    new_path = write(tmp_path / "new.csv", ["A,B", *ROWS, "9003,last"], newline="\r\n", final_newline=False)
    snapshot_diff.send_differences(sent.append, new_path, 5, known(old_path), 5)
    assert sent == [b"400,9003,last\r\n"]


@pytest.mark.parametrize(
    ("previous", "new", "reason"),
    [
        pytest.param(ROWS, [*ROWS[:10], '11,"quoted"', *ROWS[11:]], "a quote", id="a quote"),
        pytest.param(
            [*ROWS[:10], '11,"quoted"', *ROWS[11:]], ROWS, "a quote", id="a quote in the previous file"
        ),
        pytest.param(
            ROWS, [*ROWS[:10], "11,changed\r", *ROWS[11:]], "mixed line endings", id="CRLF among LF"
        ),
        pytest.param(
            ROWS, [*ROWS[:10], "11," + "x" * 300_000, *ROWS[11:]], "a line longer", id="a long line"
        ),
    ],
)
def test_files_not_alike_are_given_up(tmp_path, previous, new, reason, monkeypatch):
    monkeypatch.setattr(snapshot_diff, "MAX_LINE_BYTES", 100_000)
    with pytest.raises(snapshot_diff.NotAlike, match=reason):
        diff(tmp_path, previous, new)


def test_a_differing_last_line_ending_in_a_carriage_return_is_given_up(tmp_path):
    with pytest.raises(snapshot_diff.NotAlike, match="mixed line endings"):
        diff(tmp_path, ROWS, [*ROWS, "9003,last\r"], final_newline=False)


def test_files_that_end_their_lines_differently_are_given_up_at_once(tmp_path):
    old_path = write(tmp_path / "old.csv", ["A,B", *ROWS], newline="\r\n")
    new_path = write(tmp_path / "new.csv", ["A,B", *ROWS])
    sent: list[bytes] = []
    with pytest.raises(snapshot_diff.NotAlike, match="end their lines differently"):
        snapshot_diff.send_differences(sent.append, new_path, 4, known(old_path), 5)
    assert sent == []


def test_files_whose_differing_records_exceed_a_share_of_the_new_one_are_given_up(tmp_path):
    new = list(ROWS)
    new[200:235] = [f"{n},other {n}" for n in range(201, 236)]
    assert diff(tmp_path, ROWS, new, share=0.1)[1].differing == 35  # under a tenth of the file's bytes
    new[235:250] = [f"{n},other {n}" for n in range(236, 251)]
    with pytest.raises(snapshot_diff.NotAlike, match="records of the first"):
        diff(tmp_path, ROWS, new, share=0.1)


def test_more_previous_records_out_of_step_than_kept_are_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot_diff, "MAX_UNMATCHED", 100)
    assert diff(tmp_path, ROWS, ROWS[100:])[1].replaced_ids == list(range(1, 101))
    with pytest.raises(snapshot_diff.NotAlike, match="more than 100 records"):
        diff(tmp_path, ROWS, ROWS[101:])


def test_a_previous_file_that_is_no_longer_the_loaded_one_is_not_taken(tmp_path):
    path = write(tmp_path / "old.csv", ["A,B", *ROWS])
    loaded = known(path, sha256="0" * 64)  # rewritten since, with its size and modification time kept
    with pytest.raises(snapshot_diff.NotAlike, match="no longer the file that was loaded"):
        snapshot_diff.send_differences(lambda data: None, path, 4, loaded, 4)
    gone = KnownFile(
        tmp_path / "gone.csv", loaded.size_bytes, loaded.modified_ns, loaded.changed_ns, loaded.sha256
    )
    with pytest.raises(snapshot_diff.NotAlike, match="cannot be read"):
        snapshot_diff.send_differences(lambda data: None, path, 4, gone, 4)


# --- through the loader, against Postgres -------------------------------------------------------------


@pytest.fixture
def staged_by_difference(monkeypatch) -> list:
    """Every snapshot is read against the previous file; what each attempt staged, why it gave up, or the
    error it raised."""
    monkeypatch.setattr(snapshot_diff, "MIN_SNAPSHOT_BYTES", 0)
    attempts: list = []
    original = staging._stage_differences

    def recorded(*args):
        try:
            attempts.append(original(*args))
        except Exception as error:
            attempts.append(error)
            raise
        return attempts[-1]

    monkeypatch.setattr(staging, "_stage_differences", recorded)
    return attempts


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("base"), 3000)


def landing(directory: Path, base_dir: Path | None, snapshot: list[str] | None = None) -> Path:
    """A landing folder: the base export and a dated snapshot (a header and `snapshot`'s records)."""
    directory.mkdir(parents=True)
    if base_dir is not None:
        for name in ("invoices.csv", "organizations.csv"):
            shutil.copy(base_dir / name, directory / name)
    if snapshot is not None:
        write(directory / "exports" / DAY / "invoices.csv", [INVOICE_LINES[0], *snapshot])
    settle(*directory.rglob("*.csv"))
    return directory


def base_records(base_dir: Path) -> list[str]:
    return (base_dir / "invoices.csv").read_text().splitlines()[1:]


def day_of_changes(base_dir: Path) -> list[str]:
    records = base_records(base_dir)
    changed = [n for n, record in enumerate(records) if ",open," in record][:40]
    for n in changed:
        records[n] = records[n].replace(",open,", ",cancelled,")
    records.insert(50, records.pop(2500))  # moved back: sent, found unchanged
    records.insert(1500, invoice(1, f"{DAY}T08:00:00Z"))
    records.append(invoice(2, f"{DAY}T09:00:00Z"))
    del records[2000]
    return records


def ledger_state(conn) -> dict:
    return {
        "invoices": conn.execute("select * from raw.invoices order by invoice_id").fetchall(),
        "versions": conn.execute(
            "select * from raw.invoice_versions order by seen_on, invoice_id"
        ).fetchall(),
        "log": conn.execute(
            "select export_date, invoices_sha256, invoice_rows, invoices_new, invoices_changed,"
            " invoices_unchanged from raw.load_log order by export_date"
        ).fetchall(),
    }


def load_whole_and_by_difference(conn, tmp_path, base_dir, snapshot, staged_by_difference, monkeypatch):
    """The ledger after the base and the snapshot, staged whole and read against the base file."""
    states = []
    for by_difference in (False, True):
        conn.execute(
            "drop table if exists raw.invoices, raw.invoice_versions, raw.load_log, raw.file_checksums"
        )
        monkeypatch.setattr(snapshot_diff, "MIN_SNAPSHOT_BYTES", 0 if by_difference else 2**62)
        load_exports(conn, landing(tmp_path / str(by_difference), base_dir, snapshot))
        states.append(ledger_state(conn))
    return states


def test_a_snapshot_read_against_the_previous_file_writes_what_the_whole_file_writes(
    conn, tmp_path, base_dir, staged_by_difference, monkeypatch
):
    snapshot = day_of_changes(base_dir)
    whole, by_difference = load_whole_and_by_difference(
        conn, tmp_path, base_dir, snapshot, staged_by_difference, monkeypatch
    )
    assert [attempt.differing for attempt in staged_by_difference] == [43]  # 40 changed, 2 new, 1 moved
    assert by_difference == whole
    assert staged_by_difference[0].note.endswith("/True/invoices.csv: 43 records differ")
    assert whole["log"][-1][2:] == (3001, 2, 40, 2959)


def test_an_unchanged_record_repeated_in_a_snapshot_is_refused_at_its_lines(
    conn, tmp_path, base_dir, staged_by_difference
):
    snapshot = day_of_changes(base_dir)
    snapshot.insert(2500, snapshot[10])
    with pytest.raises(LoadError, match=r"appears 2 times in this export, on lines 12, 2502") as error:
        load_exports(conn, landing(tmp_path / "csv", base_dir, snapshot))
    # given up, and the whole file's check named the lines
    assert staged_by_difference == ["a differing record's INVOICE_ID may also be in an unchanged one"]
    assert error.value.line == 12


def test_a_new_invoice_twice_is_refused_at_both_lines_of_the_file(
    conn, tmp_path, base_dir, staged_by_difference
):
    snapshot = day_of_changes(base_dir)
    snapshot.insert(2800, invoice(7, f"{DAY}T10:00:00Z"))
    snapshot.insert(100, invoice(7, f"{DAY}T11:00:00Z"))
    with pytest.raises(LoadError, match=r"INVOICE_ID 7 appears 2 times in this export, on lines 102, 2803"):
        load_exports(conn, landing(tmp_path / "csv", base_dir, snapshot))
    assert [attempt.differing for attempt in staged_by_difference] == [45]  # read against the base file


def test_a_changed_record_beside_its_unchanged_one_is_refused(conn, tmp_path, base_dir, staged_by_difference):
    snapshot = day_of_changes(base_dir)
    unchanged = next(record for record in snapshot[100:] if ",paid," in record)
    snapshot.append(unchanged.replace(",paid,", ",refunded,"))
    with pytest.raises(LoadError, match=r"appears 2 times in this export"):
        load_exports(conn, landing(tmp_path / "csv", base_dir, snapshot))
    assert staged_by_difference == ["a differing record's INVOICE_ID may also be in an unchanged one"]


def test_a_bad_value_in_a_differing_record_is_named_at_its_line(
    conn, tmp_path, base_dir, staged_by_difference
):
    snapshot = day_of_changes(base_dir)
    fields = snapshot[700].split(",")
    fields[5] = fields[5].capitalize()  # STATUS
    snapshot[700] = ",".join(fields)
    with pytest.raises(LoadError, match="not in the export's format") as error:
        load_exports(conn, landing(tmp_path / "csv", base_dir, snapshot))
    assert (error.value.line, error.value.column) == (702, "STATUS")
    assert staged_by_difference == [error.value]  # named by the differing records' check


def test_a_differing_record_copy_refuses_is_named_by_the_whole_files_load(
    conn, tmp_path, base_dir, staged_by_difference
):
    snapshot = day_of_changes(base_dir)
    snapshot[900] = snapshot[900].rsplit(",", 1)[0]  # a column short
    with pytest.raises(LoadError, match="wrong number of columns: expected 14, found 13") as error:
        load_exports(conn, landing(tmp_path / "csv", base_dir, snapshot))
    assert error.value.line == 902
    assert staged_by_difference == ["COPY refused a differing record"]


@pytest.mark.parametrize("since", ["changed", "rewritten keeping its size and time", "gone"])
def test_a_previous_file_changed_or_gone_since_its_load_is_not_taken(
    conn, tmp_path, base_dir, staged_by_difference, since
):
    first = landing(tmp_path / "first", base_dir)
    load_exports(conn, first)
    previous = first / "invoices.csv"
    loaded = previous.stat()
    if since == "gone":
        previous.unlink()
    else:  # the file the ledger was loaded from is no longer that file
        records = previous.read_text().splitlines()
        write(previous, [*records[:5], records[5].replace(",20", ",19", 1), *records[6:]])
        settle(previous)
        if since.startswith("rewritten"):
            assert previous.stat().st_size == loaded.st_size
            os.utime(previous, ns=(loaded.st_atime_ns, loaded.st_mtime_ns))
    snapshot = day_of_changes(base_dir)
    (result,) = load_exports(conn, landing(tmp_path / "second", None, snapshot))
    # rewritten with its size and modification time kept, its change time tells (the diff would also
    # find it out by the previous file's checksum, read as it goes: see the test above)
    assert staged_by_difference == []
    assert (result.invoices.new, result.invoices.changed) == (2, 40)


def test_a_snapshot_is_read_against_the_latest_exports_file_so_a_change_undone_since_is_loaded(
    conn, tmp_path, base_dir, staged_by_difference
):
    """A snapshot that undoes the latest export's changes holds those records as an older file has them:
    read against that older file, they would not differ, and the ledger would keep the undone changes
    after a load that ended green."""
    base = base_records(base_dir)
    opened = [n for n, record in enumerate(base) if ",open," in record]
    cancelled = list(base)
    for n in opened[:40]:
        cancelled[n] = cancelled[n].replace(",open,", ",cancelled,")
    directory = landing(tmp_path / "csv", base_dir, cancelled)
    load_exports(conn, directory)
    undone = list(base)  # the 40 cancellations undone, and another invoice cancelled
    undone[opened[40]] = undone[opened[40]].replace(",open,", ",cancelled,")
    settle(write(directory / "exports" / "2024-06-30" / "invoices.csv", [INVOICE_LINES[0], *undone]))
    (*_, result) = load_exports(conn, directory)
    (stored,) = conn.execute("select count(*) from raw.invoices where status = 'cancelled'").fetchone()
    assert stored == sum(",cancelled," in record for record in undone)
    assert result.note == f"read against {directory / 'exports' / DAY / 'invoices.csv'}: 41 records differ"


def test_a_snapshot_the_diff_gives_up_on_is_staged_whole_and_says_why(
    conn, tmp_path, base_dir, staged_by_difference
):
    load_exports(conn, landing(tmp_path / "first", base_dir))
    snapshot = day_of_changes(base_dir)
    fields = snapshot[700].split(",")
    snapshot[700] = ",".join([*fields[:6], f'"{fields[6]}"', *fields[7:]])  # a currency quoted
    (result,) = load_exports(conn, landing(tmp_path / "second", None, snapshot))
    assert staged_by_difference == ["a quote: a field may hold a line break"]
    assert (result.invoices.new, result.invoices.changed) == (2, 40)
    assert result.summary().endswith(
        f"; invoices read against {tmp_path / 'first' / 'invoices.csv'}, then staged whole: a quote: a field"
        " may hold a line break"
    )


def test_a_ledger_emptied_by_hand_takes_the_whole_snapshot(conn, tmp_path, base_dir, staged_by_difference):
    load_exports(conn, landing(tmp_path / "first", base_dir))
    conn.execute("truncate raw.invoices, raw.invoice_versions")  # the load log and checksums kept
    (result,) = load_exports(conn, landing(tmp_path / "second", None, day_of_changes(base_dir)))
    assert staged_by_difference == []
    assert (result.invoices.new, result.invoices.changed) == (3001, 0)


def test_a_snapshot_interrupted_while_read_against_the_previous_file_leaves_the_ledger_as_it_was(
    conn, tmp_path, base_dir, staged_by_difference, monkeypatch
):
    directory = landing(tmp_path / "csv", base_dir, day_of_changes(base_dir))
    dated = directory / "exports"
    shutil.move(dated, tmp_path / "later")  # the base export alone first
    load_exports(conn, directory)
    shutil.move(tmp_path / "later", dated)
    before = snapshot(conn)
    original = snapshot_diff.send_differences

    def interrupted(write, *args, **kwargs):
        def write_then_stop(data: bytes) -> None:
            write(data)
            raise KeyboardInterrupt  # Ctrl-C in the middle of the COPY

        return original(write_then_stop, *args, **kwargs)

    monkeypatch.setattr(staging, "send_differences", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_exports(conn, directory)
    assert snapshot(conn) == before
    monkeypatch.setattr(staging, "send_differences", original)
    assert [result.skipped for result in load_exports(conn, directory)] == [True, False]
    assert [attempt.differing for attempt in staged_by_difference] == [43]  # the interrupted one raised


@pytest.mark.parametrize(
    ("new_mib", "previous_mib", "worth"),
    [(64, 64, True), (64, 128, True), (64, 129, False), (130, 64, False), (63, 63, False)],
)
def test_only_a_big_file_near_the_previous_ones_size_is_read_against_it(
    tmp_path, new_mib, previous_mib, worth
):
    new = tmp_path / "new.csv"
    with new.open("wb") as file:
        file.truncate(new_mib * 1024 * 1024)  # sparse: no disk written
    previous = KnownFile(tmp_path / "old.csv", previous_mib * 1024 * 1024, 0, 0, "")
    assert snapshot_diff.worth_reading(new, previous) is worth


@pytest.mark.parametrize(
    ("new_under", "previous_under", "worth"), [(0, 0, True), (1, 0, False), (0, 1, False)]
)
def test_a_file_a_byte_under_the_minimum_size_on_either_side_is_not_read_against_the_other(
    tmp_path, new_under, previous_under, worth
):
    """Under the minimum size a file stages whole in seconds: with either of the two a byte under it, a
    load reading both files would spend more than it saves."""
    new = tmp_path / "new.csv"
    with new.open("wb") as file:
        file.truncate(snapshot_diff.MIN_SNAPSHOT_BYTES - new_under)  # sparse: no disk written
    previous = KnownFile(tmp_path / "old.csv", snapshot_diff.MIN_SNAPSHOT_BYTES - previous_under, 0, 0, "")
    assert snapshot_diff.worth_reading(new, previous) is worth
