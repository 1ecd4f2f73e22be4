"""Service settings, read from ``NOWCAST_*`` environment variables (pydantic-settings).

Every limit the service enforces lives here, so that operators tune a deployment from
its environment without touching code. Lists (API keys) are given comma-separated or
as a JSON array: ``NOWCAST_API_KEYS=key-one,key-two``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nowcast.forecasters import DEFAULT_TRAINED_MODEL, FALLBACK_MODEL
from nowcast.paths import models_dir as default_models_dir
from nowcast.sequence import MAX_RAIN_RATE_MMH


class Settings(BaseSettings):
    """Configuration of one service process."""

    model_config = SettingsConfigDict(
        env_prefix="NOWCAST_", env_ignore_empty=True, extra="ignore", frozen=True
    )

    # --- the model -----------------------------------------------------------------------------------
    model: str | None = Field(
        default=None,
        description=f"forecaster to serve (NAME or NAME@VERSION); default {DEFAULT_TRAINED_MODEL!r} when "
        f"it is in the model registry, else {FALLBACK_MODEL!r}",
    )
    model_version: str | None = Field(
        default=None, description="version of a trained model (default: the live one, else the latest)"
    )
    live_poll_s: float = Field(
        default=5.0, ge=0.0, le=3600.0,
        description="seconds between looks at the model's live pointer (models/NAME/LIVE), to switch to a newly "
        "promoted or rolled-back version; 0: only on SIGHUP or an admin switch. A model pinned to a version "
        "(NAME@VERSION, NOWCAST_MODEL_VERSION or an admin switch to one) does not follow it",
    )
    models_dir: Path | None = Field(default=None, description="model registry root (default: models/)")
    device: str = Field(
        default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ..."
    )
    half_precision: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="half precision: 'auto' takes float16 on CUDA where the forecast stays within tolerance; "
        "'on' also takes bfloat16 on CPUs with bfloat16 instructions",
    )
    half_tolerance_mmh: float = Field(
        default=0.1, gt=0.0, description="largest change half precision may make (plus 1% of the rate)"
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="torch intra-op threads (default: torch's own choice, one per core); set it to the "
        "container's CPU quota, since more threads than free cores slow the model down",
    )
    warmup_grid: int = Field(
        default=256, ge=8, le=4096, description="side of the square grid the model is warmed up on"
    )

    # --- access ----------------------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="keys accepted in X-API-Key; empty: no key needed"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="keys for admin calls; empty: admin calls disabled"
    )
    docs: bool = Field(default=True, description="serve /docs, /redoc and /openapi.json (open to anyone)")
    metrics_need_key: bool = Field(
        default=False, description="/metrics asks for an API key like the /v1 calls (default: open to scrapers)"
    )

    # --- limits ----------------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="body of POST /v1/nowcasts")
    max_admin_body_bytes: int = Field(
        default=16 * 1024, ge=256, description="body of every other route (admin calls; the rest take none)"
    )
    max_rain_rate_mmh: float = Field(
        default=MAX_RAIN_RATE_MMH, gt=0.0, le=1e5, description="input rates above this are refused (422)"
    )
    max_grid_side: int = Field(default=2048, ge=2)
    max_grid_pixels: int = Field(default=1024 * 1024, ge=4)
    max_input_frames: int = Field(default=24, ge=1)
    max_steps: int = Field(default=36, ge=1)
    max_members: int = Field(default=16, ge=1)
    max_output_values: int = Field(
        default=50_000_000, ge=1, description="values of one answer: every value of every product asked for, "
        "else members x steps x pixels"
    )

    # --- memory ----------------------------------------------------------------------------------------
    request_memory_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=16 * 1024 * 1024,
        description="memory for bodies being read and decoded and answers being encoded, over all requests; "
        "a request that does not fit gets 503 + Retry-After before its body is read",
    )
    codec_threads: int = Field(default=2, ge=1, le=64, description="threads decoding bodies and encoding answers")
    max_batch_pixels: int = Field(
        default=1024 * 1024,
        ge=4,
        description="pixels of all requests in one model call (bounds the model's working memory); a larger "
        "grid runs alone",
    )

    # --- batching and queueing ----------------------------------------------------------------------
    batch_window_ms: float = Field(
        default=5.0, ge=0.0, le=10_000.0, description="how long the oldest request waits for others to join"
    )
    max_batch: int = Field(default=8, ge=1, le=1024, description="1 turns batching off")
    queue_size: int = Field(default=64, ge=1, description="requests waiting beyond this are refused (503)")
    inference_threads: int = Field(default=1, ge=1, le=64, description="batches run at once (1 suits a GPU)")
    request_timeout_s: float = Field(default=60.0, gt=0.0)
    model_deadline_s: float = Field(
        default=30.0,
        gt=0.0,
        description="a forecast the model has not given within this many seconds (queue and model call) is "
        f"answered by {FALLBACK_MODEL!r} instead, marked as a fallback; keep it well below "
        "NOWCAST_REQUEST_TIMEOUT_S so that the extrapolation has time to run",
    )
    fallback: bool = Field(
        default=True,
        description=f"answer with {FALLBACK_MODEL!r} when the model fails or passes NOWCAST_MODEL_DEADLINE_S "
        "(false: the model's error or a timeout is the answer)",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 503 answers")

    # --- the product feed ----------------------------------------------------------------------------
    products_dir: Path | None = Field(
        default=None,
        description="product folder written by `nowcast watch` (manifest.json and one CF-netCDF file per "
        "reference time); unset: the /v1/nowcasts/latest routes answer 404",
    )
    stale_after_s: float = Field(
        default=900.0, gt=0.0, description="a newest product older than this (from its reference time) is stale"
    )

    # --- the server ------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "info"
    access_log: bool = True

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def resolved_models_dir(self) -> Path:
        return default_models_dir(self.models_dir)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
