"""The README's example and its opening commands stay true."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_setup_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert first_block == ['pip install -e ".[experiments]" && emjax reproduce all --quick',
                           'pip install -e ".[test]" && python -m pytest -q']
    ci = (README.parent / ".ci" / "run").read_text()
    assert first_block[1] in ci


def test_readme_example_runs():
    code = re.search(r"## A short example\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace("n=5000", "n=500").replace("num_steps=50", "num_steps=10")
    exec(compile(code, "README.md", "exec"), {})


def test_readme_k_expert_example_runs():
    code = re.search(r"## K-expert mixtures\n\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace("2000)", "300)").replace("num_restarts=10, num_steps=500", "num_restarts=2, num_steps=20")
    exec(compile(code, "README.md", "exec"), {})


def test_readme_sweep_example_runs(tmp_path, monkeypatch):
    code = re.search(r"## Sweeps.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace("2000)", "200)").replace("np.arange(20)", "np.arange(3)").replace(", 50)", ", 10)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "my-sweep" / "sweep.json").exists()


def test_readme_datasets_and_deep_examples_run():
    text = README.read_text()
    for heading in ("## Data sets", "## Deep and sparse mixtures of experts"):
        code = re.search(re.escape(heading) + r"\n\n.*?```python\n(.*?)```", text, re.S).group(1)
        code = code.replace("num_em_steps=100", "num_em_steps=10")
        exec(compile(code, "README.md", "exec"), {})


def test_readme_streaming_and_parallel_examples_run(tmp_path, monkeypatch):
    text = README.read_text()
    monkeypatch.chdir(tmp_path)
    code = re.search(r"## Mini-batch EM over streamed data\n\n.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("200_000)", "12_000)").replace("batch_size=20_000", "batch_size=4_000")
    code = code.replace("polish_steps=20", "polish_steps=2")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "stream-checkpoint" / "state.json").exists()
    code = re.search(r"## Data-parallel EM: devices and hosts\n\n.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code.replace("40_000)", "4_000)").replace("num_steps=50", "num_steps=5"), "README.md", "exec"), {})
