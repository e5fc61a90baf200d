r"""The paper's Table 2: a 2-expert MoLogE on "Random Invert" images, EM against gradient baselines.

Setting (docs/math.md §8; choices the paper leaves open are marked *emjax*):

* **Data.** Digits (default: scikit-learn's 8×8 digits, fixed stratified split 1,347 / 450) or
  Fashion-MNIST (``--data fmnist --path DIR``: the four IDX files, 60,000 / 10,000). Pixels in
  [0, 1]; every train and test image is inverted, x ← 1 − x, with probability ½ (*emjax*: drawn
  afresh per instance); a constant-1 feature is appended (d = 65 or 785).
* **Model.** :class:`emjax.MoLogE` with K = 2 (gate sigmoid(x·w)) and 10-class softmax experts,
  ridge λ = 1e-4 on all free coefficients (*emjax*: the digits training set is small enough for a
  10-class expert to separate its share of it, where the unpenalised M-step has no finite answer;
  every method minimises the same penalised objective).
* **M-step** (*emjax*): a 10-class expert has 650 (digits) or 7,850 (Fashion-MNIST) coefficients, so
  the gate and the experts are fitted by warm-started L-BFGS, at most ``lbfgs_steps`` = 20 steps
  per sub-problem and EM iteration (a generalized EM step: the surrogate decreases, L never
  increases). Dense Newton would need 650-7,850 Hessian-vector products per step.
* **Initialisation** (*emjax*): ``start="small"`` (the default) draws every free coefficient from
  N(0, 0.01²), so training starts at cross-entropy ≈ ln 10 and accuracy ≈ 0.1 as in the paper's
  curves; ``start="data"`` is :func:`emjax.init_params` (k-means++ on [x, one-hot y], one M-step),
  from a key of its own per instance. Every method starts from the same point.
* **Early stopping** (*emjax*, off by default): with ``validation=f`` a stratified fraction f of
  the training images is held out (inverted like the others) and each method's reported iterate is
  the one with the lowest held-out loss (:func:`emjax.best_iterate`); no test data enter the choice.
* **Methods**, 100 iterations each from the same start: EM, gradient EM (3 inner steps), gradient
  descent and Adam. Step sizes: the best of :data:`TABLE2_STEP_GRIDS` on separate tuning
  instances (``fold_in(key, TUNING_STREAM)``), scored by the mean log-gap of the training
  objective to the best value any candidate reached.
* **An instance** is one draw of the inversion flags (train and test) and of the initialisation;
  25 instances, each one cell of an :func:`emjax.sweep` (chunks split over devices, resumable on
  disk). ``batch_size="auto"`` vmaps the instances of a chunk on accelerators and maps over them
  on a CPU: a vmapped ``while_loop`` runs every lane until the slowest one stops, and near
  convergence the L-BFGS line searches of different instances differ widely in length (measured on
  2 cores, 8 instances × 20 iterations: 14.6 s vmapped against 7.9 s mapped). The program has no
  LAPACK call, so ``batch_size=None`` (vmap) is safe on a CPU too.
* **Metrics** on the test split: accuracy of $\hat y = \arg\max_c \sum_k \pi_k(x)\,\mathrm{softmax}_c(x B_k)$
  and cross-entropy L; also how well the gate recovers the hidden inversion flag (agreement of
  $\arg\max_k \pi_k(x)$ with the flag, up to the label swap) and the share of test images routed to
  each expert.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._fit import fit
from .._init import init_params
from .._predict import mixture_log_proba
from .._selection import best_iterate
from ..datasets import ImageDataset, add_intercept, digits, fashion_mnist, random_invert, stratified_split
from ..models import MoEParams, MoLogE
from ..sweeps import METHOD_LABELS, METHODS, STEPPED, sweep
from ..sweeps._tuning import TUNING_STREAM, candidate_scores
from ._summaries import write_csv

DATA_SETS = ("digits", "fmnist")
STARTS = ("small", "data")
#: Iterations at which table2.md reports every method's test metrics (those within the run).
REPORTED_ITERATIONS = (5, 10, 20, 50, 100)

#: Step-size candidates (wider than :data:`emjax.sweeps.STEP_GRIDS`: on 785 pixel features the
#: largest stable gradient step is about 100 times smaller than on 65).
TABLE2_STEP_GRIDS = {
    "gd": tuple(2.0**k for k in range(-6, 3)),
    "gradient_em": tuple(2.0**k for k in range(-6, 3)),
    "adam": (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0),
    "md": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
}

#: The paper's Table 2 (Fashion-MNIST, 25 instances, 100 iterations; docs/math.md §8), for comparison.
PAPER_TABLE2 = {"em": (0.785, 0.827), "gradient_em": (0.660, 1.29), "gd": (0.624, 1.30)}


@dataclasses.dataclass(frozen=True)
class Table2Settings:
    """Table 2 settings (see the module notes for the choices)."""

    data: str = "digits"
    path: str | None = None
    num_instances: int = 25
    num_iterations: int = 100
    methods: tuple = ("em", "gradient_em", "gd", "adam")
    ridge: float = 1e-4
    lbfgs_steps: int = 20
    init_scale: float = 0.01
    invert_p: float = 0.5
    n_train: int | None = None
    n_test: int | None = None
    tuning_instances: int = 3
    seed: int = 0
    step_sizes: dict | None = None  # {method: step} fixes a baseline's step; the others are tuned
    start: str = "small"  # "small": N(0, init_scale²); "data": emjax.init_params
    validation: float = 0.0  # fraction of the training images held out for early stopping (0: off)

    def __post_init__(self):
        if self.data not in DATA_SETS:
            raise ValueError(f"data must be one of {DATA_SETS}; got {self.data!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}; got {self.start!r}")
        if not (isinstance(self.validation, (int, float)) and 0 <= self.validation < 0.5):
            raise ValueError(f"validation must be a fraction in [0, 0.5); got {self.validation!r}")

    @property
    def sweep_name(self) -> str:
        """The folder of this setting's sweeps: ``table2-<data>``, plus the start and validation
        fraction when they are not the defaults (so variants in one output folder never collide)."""
        name = f"table2-{self.data}"
        if self.start != "small" or self.validation:
            name += f"-{self.start}-v{self.validation:g}"
        return name

    @classmethod
    def quick(cls, data: str = "digits", path: str | None = None, **options) -> Table2Settings:
        """About a minute on 2 cores: fewer instances; Fashion-MNIST also subsampled (3,000 / 1,000).

        ``options`` set any other field (e.g. ``start="data"``, ``validation=0.1``)."""
        if data == "fmnist":
            sizes = dict(num_instances=2, tuning_instances=1, n_train=3000, n_test=1000)
        else:
            sizes = dict(num_instances=6, tuning_instances=2)
        return cls(data=data, path=path, **{**sizes, **options})

    def load(self) -> ImageDataset:
        """The data set, subsampled to at most ``n_train`` / ``n_test`` images when given."""
        data = digits() if self.data == "digits" else fashion_mnist(self.path)
        if self.n_train is not None or self.n_test is not None:
            n_train = None if self.n_train is None else min(self.n_train, data.n_train)
            n_test = None if self.n_test is None else min(self.n_test, data.n_test)
            data = data.subsample(n_train, n_test, seed=self.seed)
        return data


def fitted_count(data: ImageDataset, settings: Table2Settings) -> int:
    """How many training images the methods fit: all of them, or those not held out for validation."""
    if not settings.validation:
        return data.n_train
    train, _ = stratified_split(data.y_train, settings.validation, settings.seed)  # the cell's own split
    return len(train)


def _fingerprint(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def test_metrics(model: MoLogE, params: MoEParams, x: Array, labels: Array) -> tuple[Array, Array]:
    """(accuracy, cross-entropy) of the mixture's predictive distribution."""
    log_probs = mixture_log_proba(model, params, x)
    accuracy = jnp.mean(jnp.argmax(log_probs, axis=-1) == labels)
    cross_entropy = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
    return accuracy, cross_entropy


def flag_agreement(params: MoEParams, x: Array, flags: Array) -> tuple[Array, Array]:
    """(agreement of the gate's top expert with the inversion flag up to the swap, share routed to expert 1)."""
    top = jnp.argmax(x @ params.gate.T, axis=-1) == 1
    agreement = jnp.mean(top == flags)
    return jnp.maximum(agreement, 1 - agreement), jnp.mean(top)


class Table2Cell(eqx.Module):
    r"""One Table 2 instance: ``cell(key, step_sizes=None, instance=None) -> dict of traces``.

    The data (without inversion or intercept) are array fields, so :func:`emjax.sweep` passes them
    to the compiled program as arguments instead of baking them in as constants.

    Outputs (M methods, T iterations): ``train_loss`` (M, T+1), ``test_accuracy`` (M, T+1),
    ``test_loss`` (M, T+1), ``flag_agreement`` (M,), ``expert1_share`` (M,), ``status`` (M,); with a
    validation split also ``validation_loss`` (M, T+1) and ``selected_iteration`` (M,), the iterate
    of lowest validation loss (the flag agreement and share are then those of that iterate).
    """

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    x_val: Array
    y_val: Array
    step_sizes: dict
    methods: tuple = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    num_iterations: int = eqx.field(static=True)
    ridge: float = eqx.field(static=True)
    lbfgs_steps: int = eqx.field(static=True)
    init_scale: float = eqx.field(static=True)
    invert_p: float = eqx.field(static=True)
    data_name: str = eqx.field(static=True)
    fingerprint: str = eqx.field(static=True)
    start: str = eqx.field(static=True, default="small")
    validation: float = eqx.field(static=True, default=0.0)

    @classmethod
    def from_settings(
        cls, settings: Table2Settings, data: ImageDataset, step_sizes: dict | None = None, methods: tuple | None = None
    ) -> Table2Cell:
        methods = tuple(settings.methods if methods is None else methods)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
        steps = {m: jnp.asarray(1.0, jnp.float32) for m in methods if m in STEPPED}
        steps.update({m: jnp.asarray(s, jnp.float32) for m, s in (step_sizes or {}).items() if m in steps})
        train = np.arange(data.n_train)
        validation = train[:0]
        if settings.validation > 0:
            train, validation = stratified_split(data.y_train, settings.validation, settings.seed)
        return cls(
            x_train=jnp.asarray(data.x_train[train]),
            y_train=jnp.asarray(data.y_train[train]),
            x_test=jnp.asarray(data.x_test),
            y_test=jnp.asarray(data.y_test),
            x_val=jnp.asarray(data.x_train[validation]),
            y_val=jnp.asarray(data.y_train[validation]),
            step_sizes=steps,
            methods=methods,
            num_classes=data.num_classes,
            num_iterations=settings.num_iterations,
            ridge=settings.ridge,
            lbfgs_steps=settings.lbfgs_steps,
            init_scale=settings.init_scale,
            invert_p=settings.invert_p,
            data_name=data.name,
            fingerprint=_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test),
            start=settings.start,
            validation=float(settings.validation),
        )

    @property
    def model(self) -> MoLogE:
        # L-BFGS for every sub-problem, also the gate's 2 x 65: it keeps the program free of batched
        # LAPACK calls, which vmapped on a CPU can deadlock in jaxlib 0.10 (see emjax.sweeps).
        return MoLogE(2, self.num_classes, ridge=self.ridge, m_step_method="lbfgs", m_step_max_steps=self.lbfgs_steps)

    def describe(self) -> dict:
        """JSON record of the cell (what a resumed sweep compares); the data enter by fingerprint."""
        return {
            "name": "emjax.experiments.Table2Cell",
            "data": self.data_name,
            "fingerprint": self.fingerprint,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "methods": list(self.methods),
            "num_iterations": self.num_iterations,
            "ridge": self.ridge,
            "lbfgs_steps": self.lbfgs_steps,
            "init_scale": self.init_scale,
            "invert_p": self.invert_p,
            "step_sizes": {m: float(s) for m, s in self.step_sizes.items()},
            # Recorded only when not the defaults, so sweeps written before these options resume.
            **({"start": self.start} if self.start != "small" else {}),
            **({"validation": self.validation} if self.validation else {}),
        }

    def initial_params(self, key: Array, x: Array, y: Array) -> MoEParams:
        """The start every method shares: ``"small"``, N(0, init_scale²) on every free entry (pinned
        gate row and class column 0); ``"data"``, :func:`emjax.init_params` on the training data."""
        if self.start == "data":
            return init_params(self.model, key, x, y)
        d = x.shape[1]
        key_gate, key_experts = jax.random.split(key)
        dtype = self.x_train.dtype
        gate = self.init_scale * jax.random.normal(key_gate, (2, d), dtype)
        experts = self.init_scale * jax.random.normal(key_experts, (2, d, self.num_classes), dtype)
        return MoEParams(gate=gate.at[0].set(0), experts=experts.at[:, :, 0].set(0))

    def __call__(self, key, step_sizes=None, instance=None) -> dict:
        del instance  # a label only: the sweep derives the key from it
        steps = dict(self.step_sizes) if step_sizes is None else {**self.step_sizes, **step_sizes}
        key_train, key_test, key_init = jax.random.split(key, 3)
        x_train, _ = random_invert(key_train, self.x_train, self.invert_p)
        x_test, test_flags = random_invert(key_test, self.x_test, self.invert_p)
        x_train, x_test = add_intercept(x_train), add_intercept(x_test)
        y_train = self.y_train.astype(x_train.dtype)
        start = self.initial_params(key_init, x_train, y_train)
        model = self.model
        names = ["train_loss", "test_accuracy", "test_loss", "flag_agreement", "expert1_share", "status"]
        if self.validation:
            # The held-out images get flags of their own (a fourth key: the first three keep their
            # streams, so a run without validation is unchanged).
            x_val, _ = random_invert(jax.random.fold_in(key, 3), self.x_val, self.invert_p)
            x_val, y_val = add_intercept(x_val), self.y_val.astype(x_train.dtype)
            names += ["validation_loss", "selected_iteration"]
        outputs = {name: [] for name in names}
        for method in self.methods:
            solver = METHODS[method](steps.get(method, 1.0))
            result = fit(model, solver, start, x_train, y_train, self.num_iterations, keep_history=True)
            accuracy, loss = jax.vmap(lambda p: test_metrics(model, p, x_test, self.y_test))(result.params_history)
            reported = result.params
            values = {"train_loss": result.losses, "test_accuracy": accuracy, "test_loss": loss}
            if self.validation:
                best = best_iterate(model, result, x_val, y_val)
                reported = best.params
                values.update(validation_loss=best.losses, selected_iteration=best.index)
            values["flag_agreement"], values["expert1_share"] = flag_agreement(reported, x_test, test_flags)
            values["status"] = result.status
            for name in names:
                outputs[name].append(values[name])
        return {name: jnp.stack(values) for name, values in outputs.items()}


#: From this many training images on (Fashion-MNIST: minutes per instance), every device's cell
#: is its own chunk on disk, so an interrupted run loses at most the instances in flight.
SAVE_EACH_CELL_FROM = 10_000


def table2_chunk_size(data: ImageDataset) -> int | None:
    """Cells per saved chunk: one per device on large data, else the sweep's default (all at once)."""
    return jax.device_count() if data.n_train >= SAVE_EACH_CELL_FROM else None


def run_table2(settings: Table2Settings, folder: Path, *, progress=None, batch_size="auto", log=print) -> dict:
    """Tune the baselines' steps, then run every instance; returns outputs, steps and sweep results."""
    data = settings.load()
    log(
        f"table 2: {data!r}, {settings.num_instances} instances x {settings.num_iterations} iterations, "
        f"ridge {settings.ridge:g}, L-BFGS {settings.lbfgs_steps} steps per M-step sub-problem"
    )
    key = jax.random.key(settings.seed)
    chunk_size = table2_chunk_size(data)
    steps = {m: float(v) for m, v in (settings.step_sizes or {}).items() if m in settings.methods}
    stepped = tuple(m for m in settings.methods if m in STEPPED and m not in steps)
    tuning = None
    if stepped:
        grids = {m: np.asarray(TABLE2_STEP_GRIDS[m], np.float32) for m in stepped}
        tuning_cell = Table2Cell.from_settings(settings, data, methods=stepped)
        tuning = sweep(
            tuning_cell,
            jax.random.fold_in(key, TUNING_STREAM),
            {"candidate": {"step_sizes": grids}, "instance": np.arange(settings.tuning_instances)},
            key_axes=("instance",),
            out=folder / "tuning",
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=progress,
        )
        scores = candidate_scores(tuning.outputs["train_loss"], tuning.outputs["status"])
        steps.update({m: float(grids[m][np.argmin(scores[:, i])]) for i, m in enumerate(stepped)})
        log("  tuned steps: " + ", ".join(f"{METHOD_LABELS[m]} {s:g}" for m, s in steps.items()))
    cell = Table2Cell.from_settings(settings, data, step_sizes=steps)
    result = sweep(
        cell,
        key,
        {"instance": np.arange(settings.num_instances)},
        out=folder / "runs",
        batch_size=batch_size,
        chunk_size=chunk_size,
        progress=progress,
    )
    log(
        f"  compile {result.compile_seconds:.1f} s, run {result.run_seconds:.1f} s "
        f"({result.computed_chunks} chunks computed, {result.loaded_chunks} loaded)"
    )
    return {"outputs": result.outputs, "steps": steps, "data": data, "sweeps": [s for s in (tuning, result) if s]}


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def reported_iterations(outputs: dict, method_index: int) -> np.ndarray:
    """Per instance, the iterate each summary reports: the last, or the one validation chose."""
    if "selected_iteration" in outputs:
        return np.asarray(outputs["selected_iteration"][:, method_index]).astype(int)
    instances, _, length = np.shape(outputs["test_accuracy"])
    return np.full(instances, length - 1)


def _at(trace: np.ndarray, iterations: np.ndarray) -> np.ndarray:
    """``trace[n, iterations[n]]`` for every instance n."""
    return np.take_along_axis(np.asarray(trace), iterations[:, None], axis=1)[:, 0]


def table2_rows(run: dict, settings: Table2Settings) -> list[dict]:
    """One summary row per method: test accuracy, cross-entropy, flag recovery (mean and std) at the
    reported iterate (the last, or with a validation split the one of lowest validation loss)."""
    outputs = run["outputs"]
    rows = []
    for i, method in enumerate(settings.methods):
        chosen = reported_iterations(outputs, i)
        accuracy = _mean_std(_at(outputs["test_accuracy"][:, i], chosen))
        loss = _mean_std(_at(outputs["test_loss"][:, i], chosen))
        flags = _mean_std(outputs["flag_agreement"][:, i])
        rows.append(
            {
                "method": method,
                "label": METHOD_LABELS[method],
                "step": run["steps"].get(method),
                "accuracy": accuracy,
                "cross_entropy": loss,
                "flag_agreement": flags,
                "train_loss": _mean_std(_at(outputs["train_loss"][:, i], chosen)),
                "expert1_share": _mean_std(outputs["expert1_share"][:, i]),
                "iteration": _mean_std(chosen),
            }
        )
    return rows


def _markdown(rows: list[dict], settings: Table2Settings, data: ImageDataset, outputs: dict, sweeps=()) -> str:
    start = "small random start, N(0, 0.01²)" if settings.start == "small" else "data-driven start (init_params)"
    stopping = (
        f"each method's iterate of lowest loss on {100 * settings.validation:g}% of the training images held out"
        if settings.validation
        else f"the iterate after {settings.num_iterations} iterations"
    )
    lines = [
        f"# Table 2 on Random-Invert {data.name}: 2-expert MoLogE, {settings.num_instances} instances, "
        f"{settings.num_iterations} iterations",
        "",
        f"n_train = {fitted_count(data, settings)}"
        + (f" (+ {data.n_train - fitted_count(data, settings)} held out)" if settings.validation else "")
        + f", n_test = {data.x_test.shape[0]}, d = {data.x_train.shape[1] + 1} "
        f"(with intercept), ridge {settings.ridge:g}, L-BFGS {settings.lbfgs_steps} steps per M-step sub-problem; "
        f"{start}; reported: {stopping}. Mean ± std over instances, on the test split.",
        "",
        "| method | step | iteration | test accuracy | test cross-entropy | gate recovers the inversion flag | "
        "train L |",
        "|---|---|---|---|---|---|---|",
    ]
    paper_rows = [
        f"| *paper: {METHOD_LABELS[m]}* | | 100 | *{100 * a:.1f}%* | *{ce:.3g}* | | |"
        for m, (a, ce) in PAPER_TABLE2.items()
    ]
    for row in rows:
        step = "–" if row["step"] is None else f"{row['step']:g}"
        lines.append(
            f"| {row['label']} | {step} | {row['iteration'][0]:.0f} | "
            f"{100 * row['accuracy'][0]:.1f}% ± {100 * row['accuracy'][1]:.1f} | "
            f"{row['cross_entropy'][0]:.3f} ± {row['cross_entropy'][1]:.3f} | "
            f"{100 * row['flag_agreement'][0]:.1f}% ± {100 * row['flag_agreement'][1]:.1f} | "
            f"{row['train_loss'][0]:.3f} |"
        )
    if data.name == "fashion_mnist":  # the paper's Table 2 (Fashion-MNIST, 25 instances) beside ours
        lines += paper_rows
    iterations = [t for t in REPORTED_ITERATIONS if t <= settings.num_iterations]
    lines += (
        []
        if not iterations
        else [
            "",
            "Test accuracy / cross-entropy (means) along the run:",
            "",
            "| method | " + " | ".join(f"iteration {t}" for t in iterations) + " |",
            "|---|" + "---|" * len(iterations),
        ]
    )
    for i, row in enumerate(rows):
        cells = [
            f"{100 * np.mean(outputs['test_accuracy'][:, i, t]):.1f}% / {np.mean(outputs['test_loss'][:, i, t]):.3f}"
            for t in iterations
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The paper (Fashion-MNIST): "
        + ", ".join(f"{METHOD_LABELS[m]} {100 * a:.1f}% / {ce:.3g}" for m, (a, ce) in PAPER_TABLE2.items())
        + ".",
    ]
    if sweeps and any(s.computed_chunks for s in sweeps):
        computed = sum(s.compile_seconds + s.run_seconds for s in sweeps)
        lines += [
            "",
            f"Compute time of this run's sweeps (step tuning and instances, compiling included): {computed:.0f} s"
            + (" (other chunks were loaded from an earlier run)" if any(s.loaded_chunks for s in sweeps) else "")
            + ".",
        ]
    return "\n".join(lines) + "\n"


def summarise_table2(run: dict, settings: Table2Settings, out: Path) -> list[Path]:
    """Write ``table2.md``, ``table2.csv`` (final metrics) and ``table2_trajectory.csv`` (per iteration)."""
    rows = table2_rows(run, settings)
    data = run["data"]
    markdown = out / "table2.md"
    markdown.write_text(_markdown(rows, settings, data, run["outputs"], run.get("sweeps", ())))
    summary = out / "table2.csv"
    write_csv(
        summary,
        [
            "method",
            "step",
            "accuracy_mean",
            "accuracy_std",
            "cross_entropy_mean",
            "cross_entropy_std",
            "flag_agreement_mean",
            "flag_agreement_std",
            "train_loss_mean",
            "expert1_share_mean",
            "iteration_mean",
        ],
        [
            [
                r["method"],
                "" if r["step"] is None else r["step"],
                *r["accuracy"],
                *r["cross_entropy"],
                *r["flag_agreement"],
                r["train_loss"][0],
                r["expert1_share"][0],
                r["iteration"][0],
            ]
            for r in rows
        ],
    )
    trajectory = out / "table2_trajectory.csv"
    outputs = run["outputs"]
    trajectory_rows = []
    for i, method in enumerate(settings.methods):
        for t in range(settings.num_iterations + 1):
            trajectory_rows.append(
                [
                    method,
                    t,
                    *_mean_std(outputs["test_accuracy"][:, i, t]),
                    *_mean_std(outputs["test_loss"][:, i, t]),
                    float(np.mean(outputs["train_loss"][:, i, t])),
                ]
            )
    write_csv(
        trajectory,
        [
            "method",
            "iteration",
            "accuracy_mean",
            "accuracy_std",
            "cross_entropy_mean",
            "cross_entropy_std",
            "train_loss_mean",
        ],
        trajectory_rows,
    )
    return [markdown, summary, trajectory]
