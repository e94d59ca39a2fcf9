"""Wiring of the data-engineering pipeline (the work is in nodes.py)."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.data_engineering.nodes import (
    build_cohort_table,
    check_scans,
    compile_qc_table,
    encode_labels,
    preprocess_scans,
    split_by_subject,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(build_cohort_table, "params:cohort", "cohort_table", name="build_cohort_table"),
            node(encode_labels, ["cohort_table", "params:labels"], ["labelled_cohort", "label_findings"], name="encode_labels"),
            node(check_scans, "labelled_cohort", ["qc_passed_cohort", "scan_findings"], name="check_scans"),
            node(preprocess_scans, ["qc_passed_cohort", "params:preprocessing"], "volume_store", name="preprocess_scans"),
            node(split_by_subject, ["volume_store", "params:split"], "splits", name="split_by_subject"),
            node(compile_qc_table, ["label_findings", "scan_findings", "volume_store"], "qc_table", name="compile_qc_table"),
        ],
        tags=["data_engineering"],
    )
