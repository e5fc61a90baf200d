"""The README's opening commands and quick start, and the code examples of the documentation, stay true."""

import pathlib
import re
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def python_block(path, heading=None):
    """The first ```python block of ``path`` (after ``heading`` when given)."""
    text = path.read_text()
    if heading is not None:
        text = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def shrink(code, *replacements):
    """Apply (old, new) replacements that make an example small; each must apply (examples change)."""
    for old, new in replacements:
        assert old in code, f"the example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


def run(code, path):
    exec(compile(code, str(path.relative_to(ROOT)), "exec"), {})


def test_readme_opens_with_the_two_setup_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert first_block == [
        'pip install -e ".[experiments]" && emjax reproduce all --quick',
        'pip install -e ".[test]" && python -m pytest -q',
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_block[1] in ci


def test_readme_example_runs():
    code = python_block(README, "## Quick start")
    code = shrink(code, ("n=5000", "n=500"), ("num_steps=50", "num_steps=10"))
    run(code, README)


def test_docs_index_example_runs():
    path = DOCS / "index.md"
    run(shrink(python_block(path, "## Quick start"), ("n=2000", "n=500")), path)


def test_k_expert_example_runs():
    path = DOCS / "guides" / "k_experts.md"
    code = python_block(path)
    code = shrink(code, ("2000)", "300)"), ("num_restarts=10, num_steps=500", "num_restarts=2, num_steps=20"))
    run(code, path)


def test_sweep_example_runs(tmp_path, monkeypatch):
    path = DOCS / "guides" / "sweeps.md"
    code = python_block(path)
    code = shrink(code, ("2000)", "200)"), ("np.arange(20)", "np.arange(3)"), (", 50)", ", 10)"))
    monkeypatch.chdir(tmp_path)
    run(code, path)
    assert (tmp_path / "my-sweep" / "sweep.json").exists()


def test_datasets_and_deep_examples_run():
    path = DOCS / "guides" / "data_and_deep.md"
    run(python_block(path, "## Data sets"), path)
    run(
        shrink(python_block(path, "## Deep and sparse mixtures of experts"), ("num_em_steps=100", "num_em_steps=10")),
        path,
    )


def test_streaming_and_parallel_examples_run(tmp_path, monkeypatch):
    path = DOCS / "guides" / "scaling.md"
    monkeypatch.chdir(tmp_path)
    code = python_block(path, "## Mini-batch EM over streamed data")
    code = shrink(code, ("200_000)", "12_000)"), ("batch_size=20_000", "batch_size=4_000"))
    code = shrink(code, ("polish_steps=20", "polish_steps=2"))
    run(code, path)
    assert (tmp_path / "stream-checkpoint" / "state.json").exists()
    code = python_block(path, "## Data-parallel EM: devices and hosts")
    run(shrink(code, ("40_000)", "4_000)"), ("num_steps=50", "num_steps=5")), path)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_compiles(path):
    """Every ```python block of the README and the documentation is valid Python (the ones above also run)."""
    # fences may be indented (a block inside a list item): the block is the lines at that indentation
    for _, code in re.findall(r"^( *)```python\n(.*?)^\1```", path.read_text(), re.S | re.M):
        compile(textwrap.dedent(code), str(path.relative_to(ROOT)), "exec")


def test_math_page_keeps_the_section_numbers_the_code_cites():
    """Docstrings cite "§4.3", "§5.5(6)" ...: every cited section is a heading of docs/math.md."""
    headings = set(re.findall(r"^#{2,3} §([\d.]+) ", (DOCS / "math.md").read_text(), re.M))
    cited = set()
    for source in [*(ROOT / "emjax").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        for match in re.finditer(r"§(\d+(?:\.\d+)?)", source.read_text()):
            cited.add(match.group(1))
    assert cited and cited <= headings, sorted(cited - headings)


def test_after_fit_guide_examples_run(capsys):
    path = DOCS / "guides" / "after_fit.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
    code = shrink(code, ("key(1), 1000)", "key(1), 300)"), ("x, y, 5,", "x, y, 2,"))
    run(code, path)
    printed = capsys.readouterr().out
    assert "Status.ok" in printed and "expert[1].x1" in printed and "(pinned)" in printed


def test_readme_after_fit_example_prints_a_summary(capsys):
    code = shrink(python_block(README, "## After the fit"), ("key(1), 1000)", "key(1), 300)"), ("x, y, 5,", "x, y, 2,"))
    run(code, README)
    printed = capsys.readouterr().out
    assert "Status.ok" in printed and "expert[1]" in printed and "BIC" in printed


def test_readme_weights_example_matches_hasselblad(capsys):
    run(python_block(README, "### Observation weights"), README)
    printed = capsys.readouterr().out
    assert "No. observations:" in printed and "1096" in printed and "1.256" in printed and "2.663" in printed


def test_readme_covariates_example_runs():
    code = python_block(README, "### Separate gate and expert covariates, offsets")
    fixture = ROOT / "tests" / "fixtures" / "patent.csv"
    code = shrink(
        code,
        ('"tests/fixtures/patent.csv"', repr(str(fixture))),
        ("num_restarts=10", "num_restarts=3"),
        ("num_steps=2000", "num_steps=300"),
    )
    run(code, README)


def test_readme_hierarchical_example_runs(capsys):
    code = shrink(
        python_block(README, "## Hierarchical mixtures of experts"),
        ("key(1), 5000)", "key(1), 400)"),
        ("x, y, 5, num_steps=1000", "x, y, 2, num_steps=50"),  # both fits
    )
    run(code, README)
    assert "(2, 2, 3)" in capsys.readouterr().out
