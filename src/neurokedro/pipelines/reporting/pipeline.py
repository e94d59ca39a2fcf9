"""Wiring of the reporting pipeline, one instance per task namespace."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling.pipeline import bind_task
from neurokedro.pipelines.reporting import nodes


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    template = pipeline(
        [
            node(bind_task(nodes.plot_predicted_vs_true, task_name), ["predictions", "test_metrics"],
                 "predicted_vs_true_plot", name="plot_predicted_vs_true"),
            node(bind_task(nodes.plot_learning_curves, task_name), "training_history", "learning_curves_plot",
                 name="plot_learning_curves"),
            node(nodes.to_mlflow_metrics, "test_metrics", "mlflow_metrics", name="log_test_metrics"),
        ]
    )
    return pipeline(template, namespace=task_name, tags=[task_name, "reporting"])
