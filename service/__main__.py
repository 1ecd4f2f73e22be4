"""``python -m service [--host H] [--port P] [--workers N] [--model NAME]``: run the forecast service.

The one way to start it (the Docker image's CMD too); every option also comes from its
``NOWCAST_*`` variable.
"""

from __future__ import annotations

import argparse

from service.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve the nowcast forecast API.")
    parser.add_argument("--host", help="address to listen on (NOWCAST_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (NOWCAST_PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (NOWCAST_WORKERS, default 1)")
    parser.add_argument("--model", help="NAME or NAME@VERSION (NOWCAST_MODEL)")
    parser.add_argument("--model-version", help="version of a trained model (NOWCAST_MODEL_VERSION)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (NOWCAST_DEVICE)")
    parser.add_argument("--models-dir", help="model registry root (NOWCAST_MODELS_DIR)")
    parser.add_argument("--log-level", help="uvicorn log level (NOWCAST_LOG_LEVEL)")
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        args.workers,
        model=args.model,
        model_version=args.model_version,
        device=args.device,
        models_dir=args.models_dir,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
