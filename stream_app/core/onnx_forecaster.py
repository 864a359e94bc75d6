"""Serve any ONNX model whose card the runtime accepts.

Start-up is where contracts are checked: the card against the model's bytes (sha256), the
session's inputs and outputs against the card, and the card's grid against the configured one.
After that, ``forecast`` only builds features, runs one ``session.run`` and de-normalises.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import sys
from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from .card import (
    BATCH_AXIS,
    MODEL_FILE,
    UNIVERSAL,
    ModelCard,
    ModelContractError,
    TensorSpec,
)
from .contexts import calendar
from .forecasters import DAY_S, FloatArray, IntArray, WindowBatch

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PREFERENCES = ("auto", "cuda", "cpu")

# The smallest valid model (opset 17, IR 8: b = Identity(a)), to see whether a session gets CUDA.
_PROBE_MODEL = (
    b'\x08\x08:7\n\x10\n\x01a\x12\x01b"\x08Identity\x12\x01pZ\x0f\n\x01a\x12\n\n\x08\x08\x01'
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01b\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)
_ORT_DEFAULT_SEVERITY = 2
_QUIET = 3  # onnxruntime log severity: errors only, so no warnings on a plain CPU start
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(double)": "float64"}

Float32Array = npt.NDArray[np.float32]
# What onnxruntime raises for a model it cannot load (its exceptions derive from Exception only).
_LOAD_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NotImplemented,
)


class ProviderUnavailableError(RuntimeError):
    """The configured execution provider cannot run on this machine."""


def choose_providers(preference: str) -> list[str]:
    """Execution providers for a session, best first.

    ``"cpu"``: CPU only. ``"auto"``: CUDA then CPU when CUDA is really usable, else CPU only.
    ``"cuda"``: CUDA then CPU, or :class:`ProviderUnavailableError` saying why not.
    """
    if preference not in PREFERENCES:
        raise ValueError(f"STCAST_PROVIDER={preference!r}: expected one of {PREFERENCES}")
    if preference == "cpu":
        return [CPU]
    problem = cuda_problem()
    if problem is None:
        return [CUDA, CPU]
    if preference == "cuda":
        raise ProviderUnavailableError(
            f"STCAST_PROVIDER=cuda but {problem}: set STCAST_PROVIDER=auto or cpu, or run on a "
            "machine with an NVIDIA driver, a GPU and onnxruntime-gpu"
        )
    return [CPU]


@cache
def cuda_problem() -> str | None:
    """Why CUDA is not usable here, or None when it is (probed once per process)."""
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
    # Checked before any CUDA session: onnxruntime prints errors when it finds no driver.
    if cuda_device_count() < 1:
        return "no CUDA driver or no CUDA device was found"
    # A missing CUDA or cuDNN library is logged by onnxruntime's process-wide logger, which
    # the session's own severity does not reach: mute it for the probe, then restore its default.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(_PROBE_MODEL, _options(1), providers=[CUDA, CPU])
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    if CUDA not in session.get_providers():
        return "onnxruntime could not start CUDA (check the CUDA and cuDNN libraries)"
    return None


def cuda_device_count() -> int:
    """Devices the CUDA driver reports, or 0 when there is no driver (no CUDA runtime needed)."""
    try:
        driver = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except (OSError, AttributeError):
        return 0
    return count.value


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _QUIET
    return options


class OnnxForecaster:
    """A :class:`~stream_app.core.forecasters.Forecaster` backed by an onnxruntime session.

    ``model_dir`` holds ``model.onnx`` and ``card.json``; ``provider`` is ``auto``, ``cuda`` or
    ``cpu``; ``step_s`` is the configured grid step (0 accepts the card's). Any disagreement
    raises :class:`~stream_app.core.card.ModelContractError` here, never at forecast time.
    """

    def __init__(
        self, model_dir: Path, *, provider: str = "auto", threads: int = 1, step_s: int = 0
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self.step_s = step_s
        self.card = ModelCard.load(model_dir)
        _check_step(self.card, step_s)
        self.grid_step = step_s or self.card.step_s
        self._session = _open_session(model_dir / MODEL_FILE, self.card, provider, threads)
        self.provider: str = self._session.get_providers()[0]
        self._feature_fns = [_FEATURES[name] for name in self.card.features if name in _FEATURES]
        # Seconds from each window step back to the newest one, oldest first.
        self._offsets = np.arange(self.card.window - 1, -1, -1, dtype=np.int64) * self.card.step_s

    @property
    def window(self) -> int:
        return self.card.window

    @property
    def horizon(self) -> int:
        return self.card.horizon

    @property
    def model_id(self) -> str:
        return self.card.model_id

    @property
    def quantiles(self) -> tuple[float, ...]:
        """The levels of ``forecast_quantiles``' second axis (empty: point forecasts only)."""
        return self.card.quantiles

    def forecast(self, windows: WindowBatch) -> FloatArray:
        """Forecasts (batch, horizon) in the readings' units, from one ``session.run``."""
        if self.card.kind == UNIVERSAL:
            median = self.card.quantiles.index(0.5)
            out: FloatArray = self.forecast_quantiles(windows)[:, median, :]
            return out
        return self.prepare(windows)()

    def forecast_quantiles(self, windows: WindowBatch) -> FloatArray:
        """(batch, quantiles, horizon) in the readings' units, for a model that gives them."""
        if not self.card.quantiles:
            raise ValueError(f"{self.model_id} gives no quantiles")
        return self.prepare(windows)()

    def prepare(self, windows: WindowBatch) -> Callable[[], FloatArray]:
        """``forecast_quantiles`` for a universal model, else ``forecast``, in two halves: the
        session's inputs are built now, on the calling thread, and the call returned runs the
        session and converts its output. A pipeline builds the next chunk's inputs while its
        inference thread runs this one (docs/performance.md, 2026-12-06, last)."""
        self._check_shape(windows)
        n, output = len(windows), self.card.output
        if self.card.kind == UNIVERSAL:
            if n == 0:
                return partial(np.empty, (0, len(self.quantiles), self.horizon), np.float64)
            return partial(_run_quantiles, self._session, output, self._universal_feeds(windows))
        if n == 0:
            return partial(np.empty, (0, self.horizon), np.float64)
        norm = self.card.normalization
        return partial(_run_point, self._session, output, self._feeds(windows), norm.mean, norm.std)

    def at_step(self, step_s: int) -> OnnxForecaster:
        """This model serving a ``step_s`` grid (a universal model serves any; the session is
        shared, not copied)."""
        if self.card.kind != UNIVERSAL:
            _check_step(self.card, step_s)
            return self
        served = copy.copy(self)
        served.grid_step = step_s
        return served

    def _universal_feeds(self, windows: WindowBatch) -> dict[str, npt.NDArray[Any]]:
        if not self.grid_step:
            raise ModelContractError(
                f"{self.model_id} serves any grid step: say which (STCAST_STEP_S, or the "
                "network's step)"
            )
        n = len(windows)
        neighbours = windows.neighbours
        if neighbours is None:
            neighbours = np.full((n, self.window), np.nan, dtype=np.float32)
        feeds: dict[str, npt.NDArray[Any]] = {
            "context": windows.values.astype(np.float32),
            "step_s": np.full((n, 1), self.grid_step, dtype=np.float32),
            "calendar": calendar(windows.last_ts, windows.calendar_known),
            "neighbours": neighbours.astype(np.float32, copy=False),
        }
        if self.card.sensor_input is not None:  # a network's own model: its sensors' rows
            feeds[self.card.sensor_input] = self.card.sensor_indices(windows.sensors)
        return feeds

    def _check_shape(self, windows: WindowBatch) -> None:
        if windows.values.shape != (len(windows), self.window):
            raise ValueError(
                f"windows.values has shape {windows.values.shape}, "
                f"expected ({len(windows)}, {self.window}) for {self.model_id}"
            )

    def _feeds(self, windows: WindowBatch) -> dict[str, npt.NDArray[Any]]:
        feeds: dict[str, npt.NDArray[Any]] = {self.card.value_input: self._features(windows)}
        if self.card.sensor_input is not None:
            feeds[self.card.sensor_input] = self.card.sensor_indices(windows.sensors)
        return feeds

    def _features(self, windows: WindowBatch) -> Float32Array:
        """The (batch, window, features) input, one column per feature in the card's order."""
        x = np.empty((len(windows), self.window, len(self._feature_fns)), dtype=np.float32)
        ts = windows.last_ts.astype(np.int64, copy=False)[:, None] - self._offsets
        for col, build in enumerate(self._feature_fns):
            build(self.card, windows.values, ts, x[:, :, col])
        return x


def _run_point(
    session: ort.InferenceSession,
    output: str,
    feeds: dict[str, npt.NDArray[Any]],
    mean: float,
    std: float,
) -> FloatArray:
    """A window model's forecasts, de-normalised into the readings' units."""
    (y,) = session.run([output], feeds)
    out: FloatArray = np.asarray(y, dtype=np.float64) * std + mean
    return out


def _run_quantiles(
    session: ort.InferenceSession, output: str, feeds: dict[str, npt.NDArray[Any]]
) -> FloatArray:
    """A quantile model's (batch, quantiles, horizon), already in the readings' units."""
    (q,) = session.run([output], feeds)
    return np.asarray(q, dtype=np.float64)


# Each feature writes its (batch, window) column in place: fewer temporaries at batch 1.
def _value(card: ModelCard, values: FloatArray, ts: IntArray, out: Float32Array) -> None:
    np.subtract(values, card.normalization.mean, out=out, casting="same_kind")
    np.divide(out, card.normalization.std, out=out)


def _time_of_day(card: ModelCard, values: FloatArray, ts: IntArray, out: Float32Array) -> None:
    np.remainder(ts, DAY_S, out=out, casting="same_kind")  # exact: below 2**24
    np.divide(out, DAY_S, out=out)


def _day_of_week(card: ModelCard, values: FloatArray, ts: IntArray, out: Float32Array) -> None:
    days = ts // DAY_S
    days += 3  # the epoch began on a Thursday; +3 makes Monday 0
    np.remainder(days, 7, out=out, casting="same_kind")


_FEATURES: dict[str, Callable[[ModelCard, FloatArray, IntArray, Float32Array], None]] = {
    "value": _value,
    "time_of_day": _time_of_day,
    "day_of_week": _day_of_week,
}


def _check_step(card: ModelCard, step_s: int) -> None:
    if card.kind == UNIVERSAL:  # any step: the pipeline serving it says which (``at_step``)
        return
    if step_s and step_s != card.step_s:
        raise ModelContractError(
            f"card.json says step_s={card.step_s} but the worker is configured with "
            f"STCAST_STEP_S={step_s}: set STCAST_STEP_S={card.step_s} or 0, or serve a model "
            f"trained on a {step_s} s grid"
        )


def _open_session(
    model_path: Path, card: ModelCard, provider: str, threads: int
) -> ort.InferenceSession:
    model = _read_verified(model_path, card)
    providers = choose_providers(provider)
    try:
        session = ort.InferenceSession(model, _options(threads), providers=providers)
    except _LOAD_ERRORS as exc:
        raise ModelContractError(
            f"onnxruntime cannot load {model_path} ({exc}): re-export the model "
            f"(card opset {card.opset}, onnxruntime {ort.__version__})"
        ) from exc
    if provider == "cuda" and CUDA not in session.get_providers():
        raise ProviderUnavailableError(
            f"STCAST_PROVIDER=cuda but onnxruntime put {model_path} on "
            f"{session.get_providers()}: set STCAST_PROVIDER=auto or cpu"
        )
    _check_tensors("input", card.inputs, session.get_inputs())
    _check_tensors("output", card.outputs, session.get_outputs())
    return session


def _read_verified(model_path: Path, card: ModelCard) -> bytes:
    try:
        model = model_path.read_bytes()
    except FileNotFoundError:
        raise ModelContractError(
            f"no {MODEL_FILE} beside the card in {model_path.parent}: copy the model there or "
            "point STCAST_MODEL_DIR at the directory that holds both"
        ) from None
    digest = hashlib.sha256(model).hexdigest()
    if digest != card.onnx_sha256:
        raise ModelContractError(
            f"{model_path} has sha256 {digest} but card.json says onnx_sha256="
            f"{card.onnx_sha256}: the model and its card do not belong together; deploy the "
            "pair that was exported together, or re-export the card from this model"
        )
    return model


def _check_tensors(kind: str, specs: Sequence[TensorSpec], actual: Sequence[Any]) -> None:
    """The session's inputs or outputs must be exactly the card's, in name, dtype and shape."""
    found = {node.name: node for node in actual}
    if set(found) != {spec.name for spec in specs}:
        raise ModelContractError(
            f"card.json lists {kind}s {[s.name for s in specs]} but {MODEL_FILE} has "
            f"{sorted(found)}: re-export the card from this model"
        )
    for spec in specs:
        node = found[spec.name]
        dtype = _ORT_DTYPES.get(node.type, node.type)
        if dtype != spec.dtype or not _same_shape(spec.shape, node.shape):
            raise ModelContractError(
                f"card.json says {kind} {spec.name!r} is {spec.dtype}{list(spec.shape)} but "
                f"{MODEL_FILE} has {dtype}{list(node.shape)}: serve a model exported for this "
                "card (window, horizon and features must match), or re-export the card"
            )


def _same_shape(card_shape: Sequence[int | str], model_shape: Sequence[int | str | None]) -> bool:
    if len(card_shape) != len(model_shape):
        return False
    return all(
        (want == BATCH_AXIS and not isinstance(got, int)) or want == got
        for want, got in zip(card_shape, model_shape, strict=True)
    )
