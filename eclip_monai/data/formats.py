"""Column names and layouts of the public datasets we read, in one place.

The phantom generator writes these exact layouts and the readers parse them, so a reader tested on the
phantom reads the real release. Only names, paths and screen geometry live here: no logic.
"""

from __future__ import annotations

# --- MIMIC-CXR (DICOM + reports) and MIMIC-CXR-JPG (CSV tables) -------------------------------------------
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
MIMIC_METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
MIMIC_CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")  # split: train / validate / test
MIMIC_CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)  # 1.0 / 0.0 / -1.0 / blank
FRONTAL_VIEWS = ("PA", "AP")


def mimic_study_dir(subject_id: int, study_id: int) -> str:
    """``files/p10/p10000032/s50414267`` — the DICOMs of a study live in this folder."""
    subject = f"p{int(subject_id)}"
    return f"files/{subject[:3]}/{subject}/s{int(study_id)}"


def mimic_report_path(subject_id: int, study_id: int) -> str:
    """``files/p10/p10000032/s50414267.txt`` — the free-text report of a study."""
    return mimic_study_dir(subject_id, study_id) + ".txt"


def mimic_dicom_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    return f"{mimic_study_dir(subject_id, study_id)}/{dicom_id}.dcm"


# --- EGD-CXR (eye gaze on 1,083 MIMIC-CXR images, Gazepoint GP3 at 1920x1080) ------------------------------
# Gaze is recorded as a fraction of the screen (FPOGX/FPOGY). The image was padded to the screen's aspect
# ratio with image_{top,bottom,left,right}_pad pixels *of the original image* and then scaled to the screen,
# so x_original = FPOGX * (cols + left_pad + right_pad) - left_pad (likewise y with rows, top/bottom pads).
EGD_SCREEN_SIZE = (1920, 1080)  # (width, height) pixels
EGD_FIXATIONS_CSV = "fixations.csv"
EGD_MASTER_SHEET_CSV = "master_sheet.csv"
EGD_FIXATION_COLUMNS = (
    "DICOM_ID",
    "CNT",
    "TIME (in secs)",
    "FPOGX",
    "FPOGY",
    "FPOGS",  # fixation start (s)
    "FPOGD",  # fixation duration (s)
    "FPOGID",
    "FPOGV",  # 1 = valid fixation
    "BPOGX",
    "BPOGY",
    "BPOGV",
    "CX",
    "CY",
    "CS",
    "KB",
    "KBS",
    "USER",
    "LPCX",
    "LPCY",
    "LPD",
    "LPS",
    "LPV",
    "RPCX",
    "RPCY",
    "RPD",
    "RPS",
    "RPV",
    "BKID",
    "BKDUR",
    "BKPMIN",
    "LPMM",
    "LPMMV",
    "RPMM",
    "RPMMV",
    "SACCADE_MAG",
    "SACCADE_DIR",
    "X_ORIGINAL",  # pixels in the original DICOM
    "Y_ORIGINAL",
)
EGD_MASTER_SHEET_COLUMNS = (
    "dicom_id",
    "path",
    "study_id",
    "patient_id",
    "stay_id",
    "gender",
    "anchor_age",
    "image_top_pad",
    "image_bottom_pad",
    "image_left_pad",
    "image_right_pad",
    "Normal",
    "CHF",
    "pneumonia",
    "consolidation",
    "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis",
    "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural_parenchymal_opacity__",
    "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity",
    "normal_anatomically",
    "elevated_hemidiaphragm",
    "hyperaeration",
    "vascular_redistribution",
    "support_devices",
    "dx1",
    "dx1_icd",
)

# --- REFLACX (eye gaze + dictation on MIMIC-CXR, 3840x2160 screen) ----------------------------------------
REFLACX_METADATA_CSV = "main_data/metadata_phase_{phase}.csv"
REFLACX_FIXATIONS_CSV = "main_data/{id}/fixations.csv"
REFLACX_ELLIPSES_CSV = "main_data/{id}/anomaly_location_ellipses.csv"
REFLACX_TRANSCRIPTION = "main_data/{id}/transcription.txt"
REFLACX_SCREEN_SIZE = (3840, 2160)
REFLACX_PHASE3_LABELS = (
    "Abnormal mediastinal contour",
    "Acute fracture",
    "Atelectasis",
    "Consolidation",
    "Enlarged cardiac silhouette",
    "Enlarged hilum",
    "Groundglass opacity",
    "Hiatal hernia",
    "High lung volume / emphysema",
    "Interstitial lung disease",
    "Lung nodule or mass",
    "Pleural abnormality",
    "Pneumothorax",
    "Support devices",
)
REFLACX_METADATA_COLUMNS = (
    "id",
    "split",
    "eye_tracking_data_discarded",
    "image",
    "dicom_id",
    "subject_id",
    "image_size_x",  # columns of the DICOM
    "image_size_y",  # rows of the DICOM
    *REFLACX_PHASE3_LABELS,  # certainty 0 (absent) .. 5
)
REFLACX_FIXATION_COLUMNS = (
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",  # image pixels (column)
    "y_position",  # image pixels (row)
    "pupil_area_normalized",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
    "window_width",
    "window_level",
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
    "xmin_in_screen_coordinates",
    "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
)
REFLACX_ELLIPSE_COLUMNS = ("xmin", "ymin", "xmax", "ymax", "certainty", *REFLACX_PHASE3_LABELS)

# --- Evaluation sets ----------------------------------------------------------------------------------------
CHEXPERT_5X200_CSV = "chexpert_5x200.csv"  # GLoRIA's table: CheXpert columns, one of 5 classes positive
CHEXPERT_5X200_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
RSNA_LABELS_CSV = "stage_2_train_labels.csv"
RSNA_LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
RSNA_CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
RSNA_CLASS_INFO_COLUMNS = ("patientId", "class")  # Normal / Lung Opacity / No Lung Opacity / Not Normal
RSNA_IMAGE_DIR = "stage_2_train_images"  # <patientId>.dcm
OPENI_REPORTS_CSV = "indiana_reports.csv"
OPENI_REPORT_COLUMNS = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")
OPENI_PROJECTIONS_CSV = "indiana_projections.csv"
OPENI_PROJECTION_COLUMNS = ("uid", "filename", "projection")  # projection: Frontal / Lateral
OPENI_IMAGE_DIR = "images/images_normalized"
CXR14_CSV = "Data_Entry_2017.csv"
CXR14_COLUMNS = (
    "Image Index",
    "Finding Labels",  # '|'-separated, or 'No Finding'
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
CXR14_CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
CXR14_IMAGE_DIR = "images"

# --- The findings scored by default (CheXpert observation names), which the phantom world also draws ------
DEFAULT_FINDINGS = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Pneumothorax",
    "Lung Lesion",  # nodule
    "Consolidation",
    "Atelectasis",
    "Edema",
)
