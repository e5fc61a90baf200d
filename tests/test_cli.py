"""The ``emjax`` command line, run the way a user runs it."""

import subprocess
import sys

from emjax._demo import format_demo, run_demo
from emjax.cli import main


def test_demo_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "emjax", "demo", "--n", "300", "--d", "3", "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    for label in ("SymMoLinE", "SymMoLogE", "EM", "MD eta=0.5", "gradient EM", "GD", "Adam", "t=5"):
        assert label in out, label


def test_demo_table_numbers():
    results = run_demo(n=2000, d=4, num_steps=30, checkpoints=(0, 30))
    for name, per_solver in results.items():
        first = per_solver["EM"][0]
        assert first[0] == 0 and abs(first[2] - 1.0) < 1e-5 and abs(first[3] - 1.0) < 1e-5  # rel. error 1
        for label, rows in per_solver.items():
            assert rows[-1][1] < rows[0][1], (name, label)  # every solver lowers the loss
        assert per_solver["EM"][-1][3] < 0.2
    assert "L(θ_t) - L(θ*)" in format_demo(results)


def test_cli_rejects_bad_flags(capsys):
    try:
        main(["demo", "--n", "0"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "--n must be a positive integer" in capsys.readouterr().err
