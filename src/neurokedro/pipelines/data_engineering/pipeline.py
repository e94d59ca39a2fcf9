"""Wiring of the data-engineering pipeline (the nodes are in nodes.py and splits.py)."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.data_engineering.nodes import (
    build_cohort_table,
    check_scans_memoised,
    compile_qc_table,
    encode_labels,
    plot_registration_qc,
    preprocess_scans,
    summarise_intensities,
)
from neurokedro.pipelines.data_engineering.splits import split_by_subject


def preparation_pipeline(execution: str | None = None) -> Pipeline:
    """Cohort table -> labels -> QC -> volume store -> QC table (and, with registration to MNI152,
    one QC figure per scan): what every cohort goes through, for training and for prediction alike
    (the predict pipeline reuses it in its namespace).

    Args:
        execution: the parameter ``preprocess_scans`` reads its ``execution`` block from
            (``"params:execution"``); None: none, the scans are preprocessed on this machine.
    """
    preprocess_inputs = ["qc_passed_cohort", "params:preprocessing"] + ([execution] if execution else [])
    return pipeline(
        [
            node(build_cohort_table, "params:cohort", "cohort_table", name="build_cohort_table"),
            node(encode_labels, ["cohort_table", "params:labels"], ["labelled_cohort", "label_findings"], name="encode_labels"),
            # previous_scan_qc_memo is the file scan_qc_memo was saved to by the last run (None before):
            # files whose bytes are unchanged are not read again.
            node(check_scans_memoised, ["labelled_cohort", "params:preprocessing", "previous_scan_qc_memo"],
                 ["qc_passed_cohort", "scan_findings", "scan_qc_memo"], name="check_scans"),
            node(preprocess_scans, preprocess_inputs, "volume_store", name="preprocess_scans"),
            node(compile_qc_table, ["label_findings", "scan_findings", "volume_store"], "qc_table", name="compile_qc_table"),
            node(summarise_intensities, "volume_store", "intensity_statistics", name="summarise_intensities"),
            # Only draws with preprocessing.registration: affine (an empty folder otherwise).
            node(plot_registration_qc, ["volume_store", "params:preprocessing"], "registration_qc_figures",
                 name="plot_registration_qc"),
        ]
    )


def create_pipeline(namespace: str | None = None, **kwargs) -> Pipeline:
    """:func:`preparation_pipeline`, then the subject-grouped test/fold split.

    Args:
        namespace: None for the shared data engineering (``params:cohort``,
            ``params:preprocessing``, ``params:split`` -> ``volume_store``, ``splits``,
            ``qc_table``). A task with its own cohort (``Task.own_cohort``) gets it in its
            namespace instead: ``params:<namespace>.cohort``, ``.preprocessing`` and ``.split``
            -> ``<namespace>.volume_store``, ``.splits``, ``.qc_table``, ...; the label
            parameters (``params:labels``) and ``params:execution`` stay shared.
    """
    template = preparation_pipeline("params:execution") + pipeline(
        [node(split_by_subject, ["volume_store", "params:split"], "splits", name="split_by_subject")]
    )
    if namespace is None:
        return pipeline(template, tags=["data_engineering"])
    return pipeline(template, namespace=namespace,
                    parameters={"params:labels": "params:labels", "params:execution": "params:execution"},
                    tags=["data_engineering", namespace])
