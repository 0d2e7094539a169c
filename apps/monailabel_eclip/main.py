"""MONAI Label app serving a trained eCLIP: zero-shot finding probabilities and similar studies.

Start it (see docs/monailabel.md; the compat folder on PYTHONPATH makes MONAI Label 0.8.5 import under
pydicom 3)::

    PYTHONPATH=apps/monailabel_eclip/compat monailabel start_server --app apps/monailabel_eclip \\
        --studies /path/to/cxr --conf checkpoint runs/eclip/checkpoints/model.pt

``--studies`` is a folder of images or a PACS's DICOMweb URL (``http://127.0.0.1:8042/dicom-web``, see
docs/pacs.md). Infer models: ``eclip_findings`` (classification; with a PACS and ``"write_back": true`` the
findings go back as a DICOM SR, and the reader's gaze overlay as a Secondary Capture) and ``eclip_similar``
(top-k neighbours, optionally steered by the reader's ``fixations`` or ``roi``).
"""

from __future__ import annotations

from dicomweb_client.session_utils import create_session_from_user_pass
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore

import eclip_monai
from eclip_monai.errors import CXRDataError
from eclip_monai.inference.gaze_query import gaze_request

from lib.findings import ZeroShotFindings
from lib.network import AppSettings, build_classifier, load_report_index
from lib.pacs import RadiographDICOMwebDatastore, dicom_results
from lib.request_guard import install, is_upload
from lib.similar import SimilarStudies

install()  # requests name a datastore image or their own upload, never a server path (lib/request_guard.py)

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
            session = None
            if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
                session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                        settings.MONAI_LABEL_DICOMWEB_PASSWORD)
            client = DICOMwebClientX(url=self.studies, session=session,
                                     qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                     wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                     stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
            return RadiographDICOMwebDatastore(client, cache_path=settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or None)
        return LocalDatastore(
            self.studies,
            extensions=DICOM_EXTENSIONS + list(settings.MONAI_LABEL_DATASTORE_FILE_EXT),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        findings = ZeroShotFindings(self.classifier, self.settings.checkpoint, self.settings.image_size)
        similar = SimilarStudies(self.settings, self.datastore(), self.report_index)
        return {"eclip_findings": findings, "eclip_similar": similar}

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, with errors a client can act on: MONAI Label turns any exception into a
        bare "500 Internal Server Error", so an unknown image id is a 404 naming it and bad input (an
        unreadable image, a bad ``top_k``, bad fixations) a 422 with the file and field.

        ``"write_back": true`` on ``eclip_findings`` with a PACS datastore stores the findings SR (and, with
        ``fixations`` or ``roi``, the gaze overlay) into the image's study; the answer's ``stored`` lists them.
        """
        image = request.get("image")
        store = datastore or self.datastore()
        write_back = str(request.get("write_back", "")).lower() in ("1", "true", "yes")
        if request.get("model") not in self._infers:
            raise HTTPException(404, f"model {request.get('model')!r}: not one of {sorted(self._infers)}")
        if isinstance(store, RadiographDICOMwebDatastore):
            if not (isinstance(image, str) and (store.has_image(image) or is_upload(image))):
                raise HTTPException(404, f"image {image!r}: not a radiograph series in the PACS {self.studies}")
        else:
            uri = store.get_image_uri(image) if isinstance(image, str) else ""
            if not (uri or (isinstance(image, str) and is_upload(image))):
                raise HTTPException(404, f"image {image!r}: not in the datastore {self.studies}")
            if uri:
                request = {**request, "image": uri}  # the datastore's file, never a same-named path
        if write_back and (request.get("model") != "eclip_findings"
                           or not isinstance(store, RadiographDICOMwebDatastore) or is_upload(image)):
            raise HTTPException(422, "write_back: results go back as DICOM only from eclip_findings on a "
                                     "DICOMweb (PACS) datastore")
        try:
            source = store.get_image_uri(image) if write_back else None  # the PACS series' local DICOM file
            gaze = gaze_request(request, source) if write_back else None
            result = super().infer(request, datastore)
            if write_back:
                probabilities = {p["label"]: p["score"] for p in result["params"]["prediction"]}
                objects = dicom_results(source, probabilities, gaze)
                store.store(objects)
                result["params"]["stored"] = [{"modality": o.Modality, "series": o.SeriesInstanceUID,
                                               "instance": o.SOPInstanceUID} for o in objects]
            return result
        except CXRDataError as exc:
            raise HTTPException(422, str(exc)) from exc

