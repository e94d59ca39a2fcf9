import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from kedro.io.core import DatasetError  # noqa: E402

from neurokedro.io import FigureDataset  # noqa: E402


def test_figure_dataset_saves_png_atomically_and_loads_its_bytes(tmp_path):
    ds = FigureDataset(filepath=str(tmp_path / "plots" / "curve.png"))
    assert not ds.exists()
    with pytest.raises(DatasetError, match="not been saved"):
        ds.load()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ds.save(fig)
    data = ds.load()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not plt.fignum_exists(fig.number)  # closed after saving
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["curve.png"]  # no temporary file left
    with pytest.raises(DatasetError, match="matplotlib Figure"):
        ds.save("not a figure")
