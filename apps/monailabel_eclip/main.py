"""MONAI Label app serving a trained eCLIP: zero-shot finding probabilities and similar studies.

Start it (see docs/monailabel.md; the compat folder on PYTHONPATH makes MONAI Label 0.8.5 import under
pydicom 3)::

    PYTHONPATH=apps/monailabel_eclip/compat monailabel start_server --app apps/monailabel_eclip \\
        --studies /path/to/cxr --conf checkpoint runs/eclip/checkpoints/model.pt

Infer models: ``eclip_findings`` (classification) and ``eclip_similar`` (top-k neighbours).
"""

from __future__ import annotations

import os

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore

import eclip_monai
from eclip_monai.errors import CXRDataError

from lib.findings import ZeroShotFindings
from lib.network import AppSettings, build_classifier, load_report_index
from lib.similar import SimilarStudies

# chest X-rays mostly come as DICOM, which MONAI Label's default datastore extensions leave out
DICOM_EXTENSIONS = ["*.dcm", "*.DCM", "*.dicom"]


class ECLIPApp(MONAILabelApp):
    """Reads ``--conf`` into :class:`lib.network.AppSettings`, builds the network once, serves two models."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.settings = AppSettings.from_conf(conf)
        self.classifier = build_classifier(self.settings)
        self.report_index = load_report_index(self.settings, self.classifier.positive.shape[-1])
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="eCLIP chest X-ray",
                         description="Zero-shot chest X-ray findings and similar studies from an eCLIP "
                                     "checkpoint", version=eclip_monai.__version__)

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LocalDatastore(
            self.studies,
            extensions=DICOM_EXTENSIONS + list(settings.MONAI_LABEL_DATASTORE_FILE_EXT),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        findings = ZeroShotFindings(self.classifier, self.settings.checkpoint, self.settings.image_size)
        similar = SimilarStudies(findings, self.datastore(), self.settings.top_k, self.report_index)
        return {"eclip_findings": findings, "eclip_similar": similar}

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, with errors a client can act on: MONAI Label turns any exception into a
        bare "500 Internal Server Error", so an unknown image id is a 404 naming it and bad input (an
        unreadable image, a bad ``top_k``) a 422 with the file and field."""
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(404, f"image {image!r}: not in the datastore {self.studies}")
        try:
            return super().infer(request, datastore)
        except CXRDataError as exc:
            raise HTTPException(422, str(exc)) from exc

