import pytest
from kedro_datasets.pickle import PickleDataset

from neurokedro.io import OptionalDataset


def test_optional_dataset_loads_none_until_saved(tmp_path):
    dataset = OptionalDataset({"type": "pickle.PickleDataset", "filepath": str(tmp_path / "model.pkl")})
    assert dataset.load() is None and not dataset.exists()
    dataset.save({"weights": [1, 2]})
    assert dataset.exists() and dataset.load() == {"weights": [1, 2]}


def test_optional_dataset_uses_the_file_path_when_the_dataset_cannot_tell(tmp_path):
    class Mute(PickleDataset):  # like kedro-mlflow's model datasets: no _exists
        def _exists(self):
            return False

    dataset = OptionalDataset(Mute(filepath=str(tmp_path / "m.pkl")))
    assert dataset.load() is None
    dataset.save(3)
    assert dataset.load() == 3
    with pytest.raises(Exception):
        OptionalDataset({"type": "no.such.Dataset"})
