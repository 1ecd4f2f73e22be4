"""The nowcast forecast service: a FastAPI app (:func:`create_app`) run by uvicorn (:func:`serve`)."""

from service.main import create_app
from service.server import serve

__all__ = ["create_app", "serve"]
