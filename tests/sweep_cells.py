"""Cells shared by the sweep tests and their subprocesses (importable, so their source hash is stable)."""

import time

import jax
import jax.numpy as jnp

import emjax

MODEL = emjax.SymMoLinE()


def em_cell(key, snr, seed):
    """A small but real cell: draw a SymMoLinE instance at this SNR and run 8 EM steps."""
    key_truth, key_data, key_start = jax.random.split(key, 3)
    truth = emjax.testing.random_params(MODEL, key_truth, 3, 1.5, snr)
    x, y = emjax.sample(MODEL, truth, key_data, 64)
    result = emjax.fit(MODEL, emjax.em(), emjax.testing.perturb(truth, key_start), x, y, 8)
    return {"loss": result.losses, "beta": result.params.beta, "seed": seed}


def _pause(x):
    time.sleep(0.15)
    return x


def slow_cell(key, snr, seed):
    """``em_cell`` plus a host pause per chunk of work, so a test can kill a run in mid-sweep."""
    out = em_cell(key, snr, seed)
    loss = jax.pure_callback(
        _pause, jax.ShapeDtypeStruct(out["loss"].shape, out["loss"].dtype), out["loss"], vmap_method="sequential"
    )
    return dict(out, loss=loss)


GRID = {"snr": jnp.array([0.5, 1.0, 2.0]), "seed": jnp.arange(5)}
