"""What a request may name: an image of the datastore or the file it uploaded, never another path on the server.

MONAI Label 0.8.5 takes an image id that is an existing path as the file itself (``MONAILabelApp.infer``), and its
``/infer`` route copies the ``params`` form field over the request, so ``params={"image": "/etc/passwd"}``
replaces even a valid id. It also answers malformed ``params``, an unknown model or a missing image with a bare 500.
:func:`install` wraps the route's ``run_inference`` to refuse those with a 422 and to remember whether this request
uploaded a file; :func:`is_upload` then tells the app's ``infer`` that a path is that upload.
"""

from __future__ import annotations

import contextvars
import json
import os
import tempfile

import monailabel.endpoints.infer as infer_endpoint
from fastapi import HTTPException

_UPLOADED = contextvars.ContextVar("eclip_uploaded", default=False)
_UPLOAD_DIR = os.path.realpath(tempfile.gettempdir())  # where MONAI Label's route writes an upload


def _checked(run_inference):
    def run_inference_checked(background_tasks, model, image="", session_id="", params="{}", file=None,
                              label=None, output=None):
        try:
            parsed = json.loads(params) if params else {}
        except json.JSONDecodeError as exc:
            raise HTTPException(422, f"params: expected a JSON object, found invalid JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise HTTPException(422, f"params: expected a JSON object, found {type(parsed).__name__}")
        if {"image", "model"} & parsed.keys():
            raise HTTPException(422, "params: may not set image or model; name the image in the URL or upload it")
        if not (file or image or session_id):
            raise HTTPException(422, "expected an image id, an uploaded file or a session id, found none")
        token = _UPLOADED.set(file is not None)
        try:
            return run_inference(background_tasks, model, image, session_id, params, file, label, output)
        finally:
            _UPLOADED.reset(token)

    run_inference_checked.eclip_checked = True
    return run_inference_checked


def install() -> None:
    """Wrap MONAI Label's ``run_inference`` once (the route looks the name up on every request)."""
    if not getattr(infer_endpoint.run_inference, "eclip_checked", False):
        infer_endpoint.run_inference = _checked(infer_endpoint.run_inference)


def is_upload(image: str) -> bool:
    """Whether ``image`` is the temporary file this request uploaded."""
    path = os.path.realpath(image)
    return (_UPLOADED.get() and os.path.dirname(path) == _UPLOAD_DIR
            and os.path.basename(path).startswith("tmp") and os.path.isfile(path))
