"""The ``gdjax`` command line, called in-process (``cli.main``) as a user would type it.

Every option of every command has a test here or in ``tests/test_known_gaps.py`` that fails if the
option is ignored (:data:`COVERED`, checked against the parser). Two tests run the installed
script in a subprocess: a broken pipe (only a real process shows the interpreter's own complaint)
and the demo (started first, so that its time overlaps the others').
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import gdjax
from gdjax import cli, functions, results
from gdjax.race import AUTO_LEARNING_RATES

SCRIPT = shutil.which("gdjax", path=os.path.dirname(sys.executable))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "gdjax.cli"]

USER_MODULE = textwrap.dedent('''
    import jax
    import jax.numpy as jnp

    def bowl(x):
        """A correct function: its gradient is whatever jax.grad says."""
        return jnp.sum((x - 1.0) ** 2) + jnp.sum(jnp.sin(x))

    @jax.custom_vjp
    def cube_sum(x):
        return jnp.sum(x ** 3)

    def _fwd(x):
        return cube_sum(x), x

    def _bwd(x, g):
        return (g * 2.0 * x ** 2,)  # wrong: d/dx x^3 = 3 x^2

    cube_sum.defvjp(_fwd, _bwd)

    @jax.custom_vjp
    def nearly(x):
        return jnp.sum(x ** 2)

    def _nfwd(x):
        return nearly(x), x

    def _nbwd(x, g):
        return (g * 2.0 * x * (1.0 + 1e-4),)  # off by a relative 1e-4

    nearly.defvjp(_nfwd, _nbwd)

    def not_scalar(x):
        return x * 2.0

    def logs(x):
        """Finite only where every coordinate is positive."""
        return jnp.sum(jnp.log(x))
''')

MODULE = "gdjax_cli_usermod"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{MODULE}.py").write_text(USER_MODULE)
    return folder


@pytest.fixture
def gdjax_cli(user_dir, monkeypatch, capsys):
    """``gdjax_cli(*args) -> (exit status, stdout, stderr)``, run in-process from a folder that
    holds the user module."""
    monkeypatch.chdir(user_dir)
    monkeypatch.syspath_prepend(str(user_dir))

    def run(*args):
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors and --help exit from parse_args
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def is_png(path):
    data = Path(path).read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# --- the demo, in a subprocess started before everything else ----------------------------------


@pytest.fixture(scope="module", autouse=True)
def demo(tmp_path_factory, request):
    """``gdjax demo --json``, started before this module's first test so that its ~15 s overlap
    the other tests (when its test is selected); ``demo.result()`` waits for it."""
    if not any(item.name == "test_demo_reproduces_the_seed_and_writes_its_files"
               for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("demo") / "out"
    cache = out.parent / "xla-cache"
    proc = subprocess.Popen([*COMMAND, "demo", "--out", str(out), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GDJAX_CACHE_DIR": str(cache)})

    class Demo:
        folder = out
        cache_dir = cache

        @staticmethod
        def result():
            stdout, stderr = proc.communicate(timeout=180)
            return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    yield Demo
    if proc.poll() is None:
        proc.kill()


def test_demo_reproduces_the_seed_and_writes_its_files(demo):
    out = demo.folder
    proc = demo.result()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [r["gradient"] for r in summary["seed"]] == ["numerical", "autodiff"]
    assert all(r["matches_seed"] for r in summary["seed"])
    assert summary["seed"][0]["x"] == "[-6.11110793e-10  8.14814391e-10]"
    race = {r["optimizer"]: r for r in summary["race"]}
    assert list(race) == ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]
    assert race["adam"]["loss"] < 1e-6 and race["momentum"]["loss"] < 1e-6
    assert summary["lr_sweep"]["counts"]["diverged"] > 0  # the grid crosses 2/L = 1
    assert summary["lr_sweep"]["best"]["config"]["learning_rate"] < 1.0
    assert any(demo.cache_dir.iterdir())  # the console script keeps its compiled programs
    assert len(summary["gradient_checks"]) >= 10
    assert all(r["ok"] for r in summary["gradient_checks"])
    assert summary["seconds"] > 0  # timed and reported (speed is measured in benchmarks/)
    for name in ("race_rosenbrock.png", "lr_sweep_loss_curves.png", "lr_sweep_final_loss.png"):
        assert is_png(out / name)
    for name in ("race.csv", "lr_sweep.csv", "gradient_checks.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    swept = results.load(out / "lr_sweep.npz")
    assert len(swept) == 48 * 16 and swept.history is not None
    assert np.array_equal(results.load(out / "lr_sweep.csv").loss, swept.loss)


def test_demo_no_plots_draws_nothing(gdjax_cli, monkeypatch, tmp_path):
    """The demo's work shrunk (two optimisers, five steps, six configs, one check): what is
    tested is that --no-plots reaches every picture."""
    def drawing(*args, **kwargs):
        raise AssertionError("a picture was drawn under --no-plots")

    for name in ("trajectories", "loss_curves", "loss_vs_learning_rate", "basin_map"):
        monkeypatch.setattr(cli.plot, name, drawing)
    race = cli._race
    monkeypatch.setattr(cli, "_race", lambda report, f, x0, names, **kw: race(
        report, f, x0, names[:2], learning_rate=1e-3, steps=5))
    sweep = cli.sweep
    monkeypatch.setattr(cli, "sweep", lambda f, x0, opt, grid, **kw: sweep(
        f, x0, opt, grid={"learning_rate": grid["learning_rate"][::16], "x0": grid["x0"][:2]},
        **kw))
    check = [{"function": "sphere", "at": "(0)", "ok": True, "verdict": "ok",
              "rel_error": "0"}]
    monkeypatch.setattr(cli, "_demo_gradient_checks", lambda report: check)
    code, _, stderr = gdjax_cli("demo", "--no-plots", "--out", tmp_path, "--json")
    assert code == 0, stderr
    assert (tmp_path / "lr_sweep.npz").exists() and not list(tmp_path.glob("*.png"))


# --- help, and a test for every option --------------------------------------------------------


def test_script_is_installed():
    assert SCRIPT is not None, "pip install -e . should have put the gdjax script beside python"


def test_help_names_the_commands_exit_codes_and_negative_values(gdjax_cli):
    code, out, _ = gdjax_cli("--help")
    assert code == 0
    for text in ("demo", "sweep", "check", "race", "Exit status", "3 an internal error",
                 "--x0 -1.2,1", "--x0=-1.2,1"):
        assert text in out, text
    code, out, _ = gdjax_cli("--version")
    assert code == 0 and out.strip() == f"gdjax {gdjax.__version__}"


def test_race_help_states_the_learning_rates_it_tunes_on(gdjax_cli):
    code, out, _ = gdjax_cli("race", "--help")
    lrs = AUTO_LEARNING_RATES
    said = re.search(r"log grid of (\d+) values from (\S+) to (\S+) ", " ".join(out.split()))
    assert code == 0 and said, out
    assert (int(said[1]), float(said[2]), float(said[3])) == (len(lrs), lrs[0], lrs[-1])


# option -> the test that fails when the command ignores it
COVERED = {
    "demo": {"--out": "test_demo_reproduces_the_seed_and_writes_its_files",
             "--json": "test_demo_reproduces_the_seed_and_writes_its_files",
             "--no-plots": "test_demo_no_plots_draws_nothing",
             "--debug": "test_an_internal_error_is_exit_3_with_the_traceback_under_debug"},
    "sweep": {
        "--optimizer": "test_sweep_optimizer_and_hp_are_the_ones_minimize_runs",
        "--hp": "test_sweep_optimizer_and_hp_are_the_ones_minimize_runs",
        "--lr": "test_sweep_prints_a_top_table_and_the_best_and_writes_compact_files",
        "--starts": "test_sweep_prints_a_top_table_and_the_best_and_writes_compact_files",
        "--seeds": "test_sweep_prints_a_top_table_and_the_best_and_writes_compact_files",
        "--steps": "test_sweep_history_record_every_csv_and_checkpoint",
        "--tol": "test_known_gaps.py::test_cli_sweep_honours_tol",
        "--x0": "test_negative_numbers_after_x0_box_and_lr",
        "--dim": "test_sweep_dim_for_a_built_in_and_a_user_function",
        "--box": "test_negative_numbers_after_x0_box_and_lr",
        "--top": "test_top_is_a_row_count_at_any_dimension",
        "--out": "test_sweep_prints_a_top_table_and_the_best_and_writes_compact_files",
        "--no-plots": "test_sweep_history_record_every_csv_and_checkpoint",
        "--json": "test_sweep_history_record_every_csv_and_checkpoint",
        "--history": "test_sweep_history_record_every_csv_and_checkpoint",
        "--record-every": "test_sweep_history_record_every_csv_and_checkpoint",
        "--csv": "test_sweep_history_record_every_csv_and_checkpoint",
        "--checkpoint": "test_sweep_history_record_every_csv_and_checkpoint",
        "--debug": "test_an_internal_error_is_exit_3_with_the_traceback_under_debug",
    },
    "check": {
        "--shape": "test_check_exit_status_tells_right_from_wrong",
        "--point": "test_check_exit_status_tells_right_from_wrong",
        "--dtype": "test_check_exit_status_tells_right_from_wrong",
        "--seed": "test_check_seed_picks_the_point",
        "--order": "test_known_gaps.py::test_cli_check_honours_order",
        "--rtol": "test_check_tolerances",
        "--atol": "test_check_tolerances",
        "--json": "test_check_exit_status_tells_right_from_wrong",
        "--debug": "test_an_internal_error_is_exit_3_with_the_traceback_under_debug",
    },
    "race": {
        "--optimizers": "test_race_runs_the_library_race",
        "--lr": "test_race_runs_the_library_race",
        "--steps": "test_race_runs_the_library_race",
        "--x0": "test_race_runs_the_library_race",
        "--out": "test_race_runs_the_library_race",
        "--no-plots": "test_race_runs_the_library_race",
        "--json": "test_race_runs_the_library_race",
        "--debug": "test_an_internal_error_is_exit_3_with_the_traceback_under_debug",
    },
}


def test_every_option_in_help_has_a_test():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        options = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
        assert options - {"--help"} == set(COVERED[name]), name
    here = Path(__file__).parent
    for tests in COVERED.values():
        for test in filter(None, tests.values()):
            module, _, function = test.rpartition("::")
            source = (here / (module or "test_cli.py")).read_text()
            assert f"def {function}(" in source, test


# --- sweep ------------------------------------------------------------------------------------


def table_rows(text):
    """The data rows of a rich table printed as text (lines that start with a vertical bar)."""
    return [line for line in text.splitlines() if line.startswith("│")]


def test_sweep_prints_a_top_table_and_the_best_and_writes_compact_files(gdjax_cli, tmp_path):
    out = tmp_path / "sw"
    code, stdout, stderr = gdjax_cli("sweep", "himmelblau", "--optimizer", "sgd", "--lr",
                                     "1e-3:1e-1:3", "--starts", "3", "--seeds", "2", "--steps",
                                     "100", "--top", "4", "--out", out)
    assert code == 0, stderr
    assert "18 configs" in stdout and "best: config" in stdout
    assert "no --tol: a run stops only after --steps" in stdout
    assert len(table_rows(stdout)) == 4
    res = results.load(out / "sweep.npz")
    assert len(res) == 18 and res.history is None  # no --history: final outcomes only
    np.testing.assert_allclose(np.unique(res.grid["learning_rate"]), [1e-3, 1e-2, 1e-1])
    assert sorted(np.unique(res.grid["seed"])) == [0, 1]
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert summary["configs"] == 18 and summary["best"]["index"] == res.best().index
    assert not (out / "sweep.csv").exists()
    for name in ("sweep_loss_curves.png", "sweep_final_loss.png", "sweep_basins.png"):
        assert is_png(out / name)


def test_sweep_history_record_every_csv_and_checkpoint(gdjax_cli, tmp_path):
    argv = ["sweep", "sphere", "--lr", "0.1,0.2", "--steps", "20", "--history",
            "--record-every", "5", "--csv", "--checkpoint", tmp_path / "ckpt", "--json",
            "--no-plots", "--out", tmp_path / "o"]
    code, stdout, stderr = gdjax_cli(*argv)
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["steps"] == 20 and set(doc["files"]) == {"npz", "csv", "summary"}
    res = results.load(tmp_path / "o" / "sweep.npz")
    assert res.steps.tolist() == [20, 20]
    assert np.asarray(res.history.step).reshape(-1, 5)[0].tolist() == [0, 5, 10, 15, 20]
    assert np.array_equal(results.load(tmp_path / "o" / "sweep.csv").loss, res.loss)
    assert not list((tmp_path / "o").glob("*.png"))
    assert (tmp_path / "ckpt" / "manifest.json").exists()
    # the same command with another --steps is another sweep: the checkpoint refuses it
    code, _, stderr = gdjax_cli(*[a if a != "20" else "21" for a in argv])
    assert code == 2 and "checkpoint" in stderr.lower(), stderr


def test_sweep_progress_goes_to_a_terminal_stderr_also_with_json(gdjax_cli, monkeypatch,
                                                                  tmp_path):
    monkeypatch.setattr(cli.Console, "is_terminal", property(lambda console: console.stderr))
    asked = []
    sweep = cli.sweep
    monkeypatch.setattr(cli, "sweep", lambda *a, progress, **kw: asked.append(progress) or sweep(
        *a, progress=False, **kw))
    code, stdout, stderr = gdjax_cli("sweep", "sphere", "--lr", "0.1", "--steps", "2", "--json",
                                     "--no-plots", "--out", tmp_path)
    assert code == 0 and asked == [True] and json.loads(stdout)["configs"] == 1, stderr


def test_sweep_optimizer_and_hp_are_the_ones_minimize_runs(gdjax_cli, tmp_path):
    code, stdout, stderr = gdjax_cli("sweep", "rosenbrock", "--optimizer", "momentum", "--hp",
                                     "momentum=0.5", "--lr", "1e-3", "--steps", "5", "--json",
                                     "--no-plots", "--out", tmp_path)
    assert code == 0, stderr
    f = functions.rosenbrock
    alone = gdjax.minimize(f, np.float32(f.start), "momentum", learning_rate=1e-3,
                           momentum=0.5, steps=5)
    np.testing.assert_array_equal(json.loads(stdout)["best"]["params"], alone.params)


def test_negative_numbers_after_x0_box_and_lr(gdjax_cli, tmp_path):
    f = functions.rosenbrock
    alone = gdjax.minimize(f, np.float32([-0.5, -2.0]), "sgd", learning_rate=1e-3, steps=5)
    for x0 in (["--x0", "-0.5,-2"], ["--x0=-0.5,-2"]):
        code, stdout, stderr = gdjax_cli("sweep", "rosenbrock", *x0, "--lr", "1e-3", "--steps",
                                         "5", "--json", "--no-plots", "--out", tmp_path)
        assert code == 0, stderr
        np.testing.assert_array_equal(json.loads(stdout)["best"]["params"], alone.params)
    code, _, stderr = gdjax_cli("sweep", "rosenbrock", "--box", "-3:-1", "--starts", "4",
                                "--lr", "1e-4", "--steps", "2", "--json", "--no-plots",
                                "--out", tmp_path)
    assert code == 0, stderr
    starts = results.load(tmp_path / "sweep.npz").grid["x0"]
    assert starts.shape == (4, 2) and np.all((starts >= -3) & (starts <= -1))
    code, _, stderr = gdjax_cli("sweep", "--lr", "-1e-3")
    assert code == 2 and "argument --lr: expected LO:HI:N" in stderr and "'-1e-3'" in stderr


def test_sweep_dim_for_a_built_in_and_a_user_function(gdjax_cli, tmp_path):
    code, stdout, stderr = gdjax_cli("sweep", "rosenbrock", "--dim", "5", "--lr", "1e-4",
                                     "--steps", "3", "--json", "--no-plots", "--out", tmp_path)
    assert code == 0, stderr
    assert np.shape(json.loads(stdout)["best"]["params"]) == (5,)
    # a user's function has no start: it is drawn in --box (seed 0), and the note says so
    code, stdout, stderr = gdjax_cli("sweep", f"{MODULE}:bowl", "--dim", "3", "--box",
                                     "-0.5:0.5", "--lr", "0.1", "--steps", "3", "--json",
                                     "--no-plots", "--out", tmp_path)
    assert code == 0, stderr
    assert "drawn uniformly in --box -0.5:0.5 in 3 dimensions (seed 0)" in stderr
    start = np.random.default_rng(0).uniform(np.full(3, -0.5), np.full(3, 0.5)).astype("f4")
    bowl = sys.modules[MODULE].bowl
    alone = gdjax.minimize(bowl, start, "sgd", learning_rate=0.1, steps=3)
    np.testing.assert_array_equal(json.loads(stdout)["best"]["params"], alone.params)


def test_top_is_a_row_count_at_any_dimension(gdjax_cli, tmp_path):
    code, stdout, stderr = gdjax_cli("sweep", "rosenbrock", "--dim", "50", "--starts", "6",
                                     "--top", "3", "--lr", "1e-5", "--steps", "2", "--no-plots",
                                     "--out", tmp_path)
    assert code == 0, stderr
    assert len(table_rows(stdout)) == 3, stdout


def test_a_start_where_f_is_not_finite_has_its_own_message(gdjax_cli, tmp_path):
    code, _, stderr = gdjax_cli("sweep", f"{MODULE}:logs", "--x0", "-1,2", "--lr", "0.1",
                                "--steps", "3", "--no-plots", "--out", tmp_path)
    assert code == 2, stderr
    assert "not finite at --x0 [-1, 2]" in stderr and "learning rate" in stderr


# --- tables that fit the terminal -------------------------------------------------------------


def wide_result():
    """A sweep result with 50-D starts and small losses whose exponents matter."""
    n = 6
    rng = np.random.default_rng(0)
    loss = np.array([8.02232e-05, 3.14056e-10, 2.5e3, 1.0, 7.7e-21, np.nan])
    return results.SweepResult(
        grid={"learning_rate": np.geomspace(1e-4, 1e-1, n), "seed": np.arange(n),
              "x0": rng.uniform(-5, 5, (n, 50)).astype(np.float32)},
        params=rng.normal(size=(n, 50)).astype(np.float32), loss=loss, best_loss=loss / 2,
        grad_norm=np.ones(n), status=["max_steps"] * 5 + ["diverged"],
        steps=np.full(n, 1000), diverged_at=np.array([-1] * 5 + [412]))


@pytest.mark.parametrize("width", [80, 120])
def test_tables_fit_the_terminal_without_cutting_numbers(width):
    res = wide_result()
    console = Console(file=io.StringIO(), width=width, record=True)
    console.print(res.table(top=5))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert not re.search(r"[\d.e+-]…", text), text  # no number cut short
    rows = table_rows(text)
    assert len(rows) == 5
    for i in np.argsort(res.loss)[:5]:  # every shown final loss whole, exponent included
        assert f" {res.loss[i]:.4g} " in text, (res.loss[i], text)
    if width == 120:
        assert re.search(r"\[-?\d\.\d+, -?\d\.\d+, … \(50\)\]", text), text  # x0, summarised
    else:
        assert "(left out at this width:" in text


# --- check ------------------------------------------------------------------------------------


def test_check_exit_status_tells_right_from_wrong(gdjax_cli, tmp_path):
    code, out, _ = gdjax_cli("check", f"{MODULE}:bowl", "--shape", "6")
    assert code == 0 and "gradient OK" in out
    code, out, _ = gdjax_cli("check", f"{MODULE}:cube_sum", "--shape", "3,2", "--dtype",
                             "float32", "--seed", "1")
    assert code == 1 and "gradient check FAILED: wrong gradient" in out and "float32" in out
    np.save(tmp_path / "x.npy", np.array([[0.5, -1.0], [2.0, 0.1]], np.float32))
    code, out, _ = gdjax_cli("check", f"{MODULE}:bowl", "--point", tmp_path / "x.npy", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["shape"] == [2, 2]
    assert doc["dtype"] == "float32"
    code, out, _ = gdjax_cli("check", "rosenbrock", "--json")  # a built-in, by its name
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["shape"] == [2]


def test_check_seed_picks_the_point(gdjax_cli):
    for seed in (0, 3):
        code, out, _ = gdjax_cli("check", f"{MODULE}:bowl", "--shape", "4", "--seed", seed,
                                 "--json")
        doc = json.loads(out)
        x = np.random.default_rng(seed).standard_normal(4)[doc["index"][0]]
        assert code == 0
        np.testing.assert_allclose(doc["autodiff"], 2 * (x - 1) + np.cos(x), rtol=1e-12)


def test_check_tolerances(gdjax_cli):
    nearly = ("check", f"{MODULE}:nearly", "--shape", "3")  # a relative error of 1e-4
    assert gdjax_cli(*nearly)[0] == 1
    assert gdjax_cli(*nearly, "--rtol", "1e-3")[0] == 0
    assert gdjax_cli(*nearly, "--rtol", "1e-5")[0] == 1
    assert gdjax_cli(*nearly, "--atol", "1")[0] == 0


# --- race -------------------------------------------------------------------------------------


def test_race_runs_the_library_race(gdjax_cli, tmp_path):
    code, out, stderr = gdjax_cli("race", "beale", "--optimizers", "sgd,adam", "--lr", "0.01",
                                  "--steps", "30", "--x0", "-1,-1.5", "--out", tmp_path,
                                  "--json")
    assert code == 0, stderr
    doc = json.loads(out)
    alone = gdjax.race(functions.beale, np.float32([-1, -1.5]), ["sgd", "adam"],
                       learning_rate=0.01, steps=30)
    assert doc["results"] == alone.rows and doc["x0"] == [-1, -1.5]
    assert is_png(tmp_path / "race.png")
    code, _, _ = gdjax_cli("race", "beale", "--optimizers", "adam", "--lr", "0.01", "--steps",
                           "3", "--out", tmp_path / "n", "--no-plots")
    assert code == 0 and not list((tmp_path / "n").glob("*.png"))


# --- the exit-code contract -------------------------------------------------------------------

BAD_USAGE = [
    ((), "required"),
    (("sweep", "--lr", "0:1:3"), "LO:HI:N"),
    (("sweep", "nosuch"), "unknown function 'nosuch': give a built-in"),
    (("check", "nosuch", "--shape", "3"), "expected module:function, got 'nosuch'"),
    (("sweep", "rosenbrock", "--hp", "momentum=0.9"), "momentum"),
    (("sweep", "himmelblau", "--dim", "3"), "defined in 2 dimensions"),
    (("sweep", "--out", "afile"), "argument --out: 'afile' is a file, not a folder"),
    (("check", f"{MODULE}:bowl"), "--shape"),
    (("check", "nosuchmodule:f", "--shape", "3"), "cannot import module 'nosuchmodule'"),
    (("check", f"{MODULE}:not_scalar", "--shape", "3"), "scalar"),
    (("check", "rosenbrock", "--point", "empty.npy"), "cannot read --point 'empty.npy'"),
    (("check", "rosenbrock", "--point", "nothing.npy"), "holds an empty array"),
    (("race", "--optimizers", "sgd,bogus"), "bogus"),
    (("race", "--out", "afile"), "is a file, not a folder"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_USAGE,
                         ids=[" ".join(a) or "no-command" for a, _ in BAD_USAGE])
def test_bad_usage_is_one_line_and_exit_2(gdjax_cli, user_dir, args, expected):
    (user_dir / "afile").write_text("not a folder")
    (user_dir / "empty.npy").write_bytes(b"")
    np.save(user_dir / "nothing.npy", np.zeros(0))
    code, stdout, stderr = gdjax_cli(*args)
    assert code == 2, (args, stdout, stderr)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], stderr
    assert expected in lines[0]
    assert stdout == ""


@pytest.mark.parametrize("error", [ValueError, TypeError, KeyError])
def test_an_internal_error_is_exit_3_with_the_traceback_under_debug(gdjax_cli, monkeypatch,
                                                                     error):
    def bug(*args):
        raise error("a bug in gdjax")

    monkeypatch.setattr(cli, "objective", bug)
    for command in ("sweep", "race", "check"):
        code, _, stderr = gdjax_cli(command, "sphere")
        assert code == 3, stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert f"gdjax {command}: internal error: {error.__name__}:" in stderr
        assert "--debug" in stderr
        for argv in (("--debug", command, "sphere"), (command, "sphere", "--debug")):
            code, _, stderr = gdjax_cli(*argv)
            assert code == 3 and stderr.startswith("Traceback"), stderr
            assert "a bug in gdjax" in stderr.splitlines()[-1]


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("argv", [("check", "sphere", "--json"), ("check", "sphere")])
def test_a_closed_stdout_ends_quietly(gdjax_cli, monkeypatch, argv):
    """Printed JSON and rich's printing (which by itself would exit with 1) alike."""
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code, _, stderr = gdjax_cli(*argv)
    assert code == 141 and stderr == ""


def test_a_broken_pipe_in_a_real_process_prints_nothing():
    """``gdjax check ... --json | head -0``: the reader is gone before the first write."""
    proc = subprocess.Popen([*COMMAND, "check", "sphere", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == "", stderr


def test_negative_values_join_their_option():
    assert cli.negative_values(["--x0", "-1.2,1", "--box", "-2:2", "--lr", "-.5", "--x0",
                                "--steps", "--", "--x0", "-1"]) == [
        "--x0=-1.2,1", "--box=-2:2", "--lr=-.5", "--x0", "--steps", "--", "--x0", "-1"]


def test_stdout_is_plain_while_a_library_argument_error_is_usage(gdjax_cli, tmp_path):
    """A ValueError from the library's argument checks (an optax hyperparameter the optimiser
    does not have) is usage; the same class raised by the command's own code is not (above)."""
    code, out, err = gdjax_cli("sweep", "sphere", "--hp", "b1=0.5", "--steps", "2", "--out",
                               tmp_path)
    assert code == 2 and out == "" and "b1" in err and err.count("\n") == 1, err

