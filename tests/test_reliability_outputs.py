"""Outputs other than the run directory: `genrl export`, the evaluation cache, `genrl bench --out`,
`genrl eval / sample / plot`. Nothing genrl did not write is deleted, a bad input is one line (exit 2)
with nothing written, and a crafted cache entry or suite name cannot reach outside its folder."""

import json
import os
import warnings

import pytest
from test_export import TINY, make_run

from genrl import cli, export


def tree(path):
    """Every file under `path` with its bytes: what a command must leave untouched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error(capsys) -> str:
    """The command's error: exactly one `genrl: error:` line and no traceback (notes such as the thread count aside)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("genrl: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def export_cli(run, out, *extra):
    return cli.main(["export", str(run), "--out", str(out), *extra])


# ------------------------------------------------------------------------------------------ genrl export


def test_export_into_a_folder_with_other_files_is_refused_and_overwrite_keeps_them(tmp_path, capsys):
    run, _ = make_run(tmp_path, "tiny", TINY)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "config.json").write_text("my own config")
    assert export_cli(run, out) == 2
    err = one_error(capsys)
    assert "--overwrite" in err and "notes.txt" in err
    assert tree(out) == {"notes.txt": b"my notes", "config.json": b"my own config"}  # nothing written

    assert export_cli(run, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "my notes"  # only export's own entries are replaced
    assert json.loads((out / "config.json").read_text())["finetune"] == "lora"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "config.json", "transformer", "text_encoder", export.MARKER])


def test_export_again_into_its_own_folder_replaces_only_what_it_wrote(tmp_path):
    run, _ = make_run(tmp_path, "tiny", TINY)
    out = tmp_path / "export"
    assert export_cli(run, out) == 0
    (out / "README.md").write_text("added by the user after the export")
    first = tree(out / "transformer")
    assert export_cli(run, out) == 0  # no --overwrite needed: the folder is export's
    assert (out / "README.md").read_text() == "added by the user after the export"
    assert tree(out / "transformer") == first
    assert not [p for p in out.iterdir() if p.name.startswith(export.STAGING_PREFIX)]

    (out / export.MARKER).write_text(json.dumps({"entries": ["config.json", "text_encoder"]}))
    (out / "transformer" / "theirs.bin").write_bytes(b"x")  # a folder the last export did not record: someone else's
    assert export_cli(run, out) == 2 and (out / "transformer" / "theirs.bin").exists()


@pytest.mark.parametrize("where", ["the run", "inside the run", "holding the run", "another run"])
def test_export_never_writes_into_a_run_directory(tmp_path, capsys, where):
    (tmp_path / "runs").mkdir()
    run, _ = make_run(tmp_path / "runs", "tiny", TINY)
    other, _ = make_run(tmp_path / "runs", "tiny", TINY, name="other")
    out = {"the run": run, "inside the run": run / "exported", "holding the run": tmp_path / "runs",
           "another run": other}[where]
    before = tree(tmp_path)
    assert export_cli(run, out, "--overwrite") == 2  # not even with --overwrite
    assert "run directory" in one_error(capsys)
    assert tree(tmp_path) == before and not (run / "exported").exists()
    assert list((run / "checkpoints").iterdir())


def test_export_to_an_existing_file_is_refused(tmp_path, capsys):
    run, _ = make_run(tmp_path, "tiny", TINY)
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    assert export_cli(run, target, "--overwrite") == 2
    assert "is a file" in one_error(capsys) and target.read_bytes() == b"keep me"


def test_export_to_the_current_directory(tmp_path, monkeypatch, capsys):
    run, _ = make_run(tmp_path, "tiny", TINY)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert export_cli(run, ".") == 0
    assert {p.name for p in here.iterdir()} == {"config.json", "transformer", "text_encoder", export.MARKER}
    assert os.getcwd() == str(here) and (here / "transformer").is_dir()  # the folder itself is never replaced

    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "data.csv").write_text("1,2")
    monkeypatch.chdir(crowded)
    capsys.readouterr()
    assert export_cli(run, ".") == 2
    assert "--overwrite" in one_error(capsys)
    assert [p.name for p in crowded.iterdir()] == ["data.csv"] and not list(tmp_path.glob(".*"))
    monkeypatch.chdir(run)
    assert export_cli(run, ".", "--overwrite") == 2 and "run directory" in one_error(capsys)


def test_a_crafted_export_marker_cannot_make_export_remove_other_files(tmp_path):
    run, _ = make_run(tmp_path, "tiny", TINY)
    out = tmp_path / "export"
    out.mkdir()
    (tmp_path / "precious").write_text("x")
    (out / "data").write_text("y")
    (out / export.MARKER).write_text(json.dumps({"entries": ["../precious", "data", "/etc"]}))
    assert export_cli(run, out) == 0
    assert (tmp_path / "precious").read_text() == "x" and (out / "data").read_text() == "y"


# ------------------------------------------------------------------------------------ the evaluation cache


def test_the_cache_prunes_only_its_own_entries(tmp_path, monkeypatch):
    from conftest import MeanBrightness
    from test_eval_cache import CONTEXT, SETTINGS
    from toy_adapter import ToyAdapter

    from genrl import eval_cache

    monkeypatch.setattr(eval_cache, "KEEP_ENTRIES", 1)
    cache = tmp_path / "cache"
    cache.mkdir()
    mine = {name: name.encode() for name in ("model.pt", "best.pt", "a" * 63 + ".pt", "B" * 64 + ".pt")}
    for name, data in mine.items():
        (cache / name).write_bytes(data)
        os.utime(cache / name, (0, 0))  # the least recently used of all
    for steps in (2, 3, 4):
        eval_cache.cached_evaluate(cache, ToyAdapter(), MeanBrightness(), SETTINGS | {"num_steps": steps}, CONTEXT)
    assert {name: (cache / name).read_bytes() for name in mine} == mine
    assert len([p for p in cache.iterdir() if eval_cache.is_entry_name(p.name)]) == 1


def _base_eval(overrides, cache, run_dir):
    return cli.main(["train", *overrides, "train.updates=1", "log.eval_at_end=false", "log.sample_every=0",
                     f"log.eval_cache_dir={cache}", f"run_dir={run_dir}"])


@pytest.mark.parametrize("layout", ["flat, as an older genrl wrote it", "with this cache's header"])
def test_a_crafted_cache_entry_is_dropped_and_the_base_evaluation_computed_afresh(tmp_path, toy_overrides, capsys, layout):
    import torch

    from genrl import eval_cache

    cache = tmp_path / "cache"
    assert _base_eval(toy_overrides, cache, tmp_path / "first") == 0
    expected = json.loads((tmp_path / "first" / "eval" / "base.json").read_text())
    (entry,) = [p for p in cache.iterdir() if eval_cache.is_entry_name(p.name)]
    record = torch.load(entry, weights_only=True)
    record = record.get("record", record)  # the fields of the evaluation
    forged = dict(record, shown=[0, 10_000], result=dict(record["result"], score=0.999))  # sizes that do not fit
    torch.save(forged if layout.startswith("flat") else {**torch.load(entry, weights_only=True), "record": forged}, entry)

    with pytest.warns(UserWarning, match="damaged evaluation cache entry"):
        assert _base_eval(toy_overrides, cache, tmp_path / "second") == 0
    assert json.loads((tmp_path / "second" / "eval" / "base.json").read_text()) == expected  # not the forged score
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _base_eval(toy_overrides, cache, tmp_path / "third") == 0  # the entry was rewritten whole
    assert "is the cached one" in capsys.readouterr().out
    assert json.loads((tmp_path / "third" / "eval" / "base.json").read_text()) == expected


# ------------------------------------------------------------------------------------------ genrl bench


def _suite_file(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("name: ../../escaped\nalgorithms: {flow_grpo: {}}\nbudget_nfe: 10\n", "name='../../escaped' is not allowed"),
    ("name: a/b\nalgorithms: {flow_grpo: {}}\nbudget_nfe: 10\n", "name='a/b' is not allowed"),
    ("name: s\nalgorithms: {flow_grpo: {}, ../up: {algorithm: flow_grpo}}\nbudget_nfe: 10\n", "'../up'"),
    ("name: s\nalgorithms:\n  flow_grpo: {}\n  flow_grpo: {clip_range: 0.1}\nbudget_nfe: 10\n",
     "key 'flow_grpo' is given twice"),
    ("name: s\nalgorithms: {flow_grpo: {}, my_variant: {clip_range: 0.1}}\nbudget_nfe: 10\n",
     "label 'my_variant' is not an algorithm's name"),
    ("name: s\nalgorithms: {arm: {algorithm: no_such_algo}}\nbudget_nfe: 10\n", "names the algorithm 'no_such_algo'"),
])
def test_a_bad_suite_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, text, message):
    monkeypatch.chdir(tmp_path)
    path = _suite_file(tmp_path, text)
    assert cli.main(["bench", str(path), "--dry-run"]) == 2
    assert message in one_error(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["suite.yaml"]  # no bench_out/, nothing outside it


def test_a_second_bench_on_one_out_is_refused_naming_the_first(tmp_path, toy_overrides, capsys):
    import subprocess
    import sys

    from genrl import dirlock

    out = tmp_path / "bench"
    holder = subprocess.Popen(  # a bench in flight: what run_suite holds for as long as it runs
        [sys.executable, "-c", "import sys; from genrl import dirlock; lock = dirlock.hold(sys.argv[1], 'bench output "
         "directory'); print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        suite_path = _suite_file(tmp_path, "name: toy\nalgorithms: {flow_grpo: {}}\nbudget_nfe: 100\noverrides: "
                                 + json.dumps([o for o in toy_overrides if not o.startswith(("run_dir=", "train.updates="))]))
        assert cli.main(["bench", str(suite_path), "--out", str(out), "--dry-run"]) == 2
        assert f"in use by process {holder.pid}" in one_error(capsys)
        assert sorted(p.name for p in out.iterdir()) == [dirlock.LOCK_NAME]  # the second wrote nothing
    finally:
        holder.communicate("")
    assert cli.main(["bench", str(suite_path), "--out", str(out), "--dry-run"]) == 0  # released with its process
    assert (out / "results.json").is_file()


# ------------------------------------------------------------------------------ genrl eval / sample / plot


@pytest.mark.parametrize("argv, message", [
    (["eval", "--seeds", "-1"], "--seeds -1 is not allowed"),
    (["eval", "--steps", "-1"], "--steps -1 is not allowed"),
    (["eval", "--steps", "0"], "--steps 0 is not allowed"),
    (["sample", "--prompt", "a red circle", "--seeds", "0"], "--seeds 0 is not allowed"),
    (["sample", "--prompt", "a red circle", "--steps", "0"], "--steps 0 is not allowed"),
    (["eval", "--out", "taken"], "is a directory"),
    (["eval", "--out", "taken/../grid_taken.json"], "grid_taken.png is a directory"),
    (["eval", "--out", "scores.png"], "give a .json name"),
    (["sample", "--prompt", "a red circle", "--out", "taken"], "is a directory"),
    (["sample", "--prompt", "a red circle", "--out", "a_file/samples.png"], "a_file is a file"),
])
def test_eval_and_sample_refuse_bad_requests_before_sampling(tmp_path, monkeypatch, capsys, argv, message):
    from genrl import evaluation

    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "grid_taken.png").mkdir()
    (tmp_path / "a_file").write_text("x")
    for name in ("sample_ode", "evaluate_record"):  # what sample and eval call to draw images
        monkeypatch.setattr(evaluation, name, lambda *a, **k: pytest.fail("sampled before checking the request"))
    before = tree(tmp_path)
    assert cli.main(argv) == 2
    assert message in one_error(capsys)
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "grid_taken.png", "taken"]


def _plot_run(path):
    from test_plot import fake_run

    return fake_run(path, updates=5)


def test_plot_names_a_corrupt_evaluation_summary_and_a_line_that_is_not_utf8(tmp_path, capsys):
    run = _plot_run(tmp_path / "run")
    out = tmp_path / "curves.png"
    (run / "eval" / "base.json").write_text('{"score": 0.3')  # cut short
    assert cli.main(["plot", str(run), "--out", str(out)]) == 2
    assert "base.json is not an evaluation summary" in one_error(capsys)
    (run / "eval" / "base.json").write_text('{"score": "high"}')
    assert cli.main(["plot", str(run), "--out", str(out)]) == 2 and "not a number" in one_error(capsys)
    (run / "eval" / "base.json").write_text('{"score": 0.3}')

    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    (run / "metrics.jsonl").write_bytes(b"\n".join([lines[0], b'{"update": 2, "note": "\xff\xfe"}', *lines[2:]]) + b"\n")
    assert cli.main(["plot", str(run), "--out", str(out)]) == 2
    assert "metrics.jsonl:2 is not UTF-8 text" in one_error(capsys)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_plot_to_an_existing_directory_is_refused_before_drawing(tmp_path, capsys):
    run = _plot_run(tmp_path / "run")
    (tmp_path / "plots").mkdir()
    assert cli.main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 2
    assert "is a directory" in one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "run"] and not list((tmp_path / "plots").iterdir())
