"""Wiring of the data-engineering pipeline (the work is in nodes.py)."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.data_engineering.nodes import (
    build_cohort_table,
    check_scans,
    compile_qc_table,
    encode_labels,
    plot_registration_qc,
    preprocess_scans,
    split_by_subject,
    summarise_intensities,
)


def preparation_pipeline() -> Pipeline:
    """Cohort table -> labels -> QC -> volume store -> QC table (and, with registration to MNI152,
    one QC figure per scan): what every cohort goes through, for training and for prediction alike
    (the predict pipeline reuses it in its namespace)."""
    return pipeline(
        [
            node(build_cohort_table, "params:cohort", "cohort_table", name="build_cohort_table"),
            node(encode_labels, ["cohort_table", "params:labels"], ["labelled_cohort", "label_findings"], name="encode_labels"),
            node(check_scans, "labelled_cohort", ["qc_passed_cohort", "scan_findings"], name="check_scans"),
            node(preprocess_scans, ["qc_passed_cohort", "params:preprocessing"], "volume_store", name="preprocess_scans"),
            node(compile_qc_table, ["label_findings", "scan_findings", "volume_store"], "qc_table", name="compile_qc_table"),
            node(summarise_intensities, "volume_store", "intensity_statistics", name="summarise_intensities"),
            # Only draws with preprocessing.registration: affine (an empty folder otherwise).
            node(plot_registration_qc, ["volume_store", "params:preprocessing"], "registration_qc_figures",
                 name="plot_registration_qc"),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """:func:`preparation_pipeline`, then the subject-grouped test/fold split."""
    return pipeline(
        preparation_pipeline()
        + pipeline([node(split_by_subject, ["volume_store", "params:split"], "splits", name="split_by_subject")]),
        tags=["data_engineering"],
    )
