"""The kernel cost model: how long a compute kernel takes on one device, and what each figure rests on.

`CostModel` (`model.py`) prices GEMMs, grouped expert GEMMs, attention and memory-bound kernels; its two
constructors are module functions here: `model_for_gpu(gpu)` (the shipped profile of a preset that has one, else
datasheet peaks with assumed efficiencies) and `model_from_profile(path)` (a measured profile file), both in
`loading.py`. The fits live beside it (`grouped.py`, `gemm_fit.py`, `fp8.py`, `phase_features.py`), and so do the
measured kernel tables (`tables/`, read by `kernel_tables.py`), the profiles fitted to them (`shipped/`, listed in
`shipped_profiles.py`) and `moesim profiles build` (`build.py`, `shipping.py`).

The package sits below the simulator: it imports `cluster` (GPU presets) and `errors`, nothing above.
"""

from moesim.cost.loading import model_for_gpu, model_from_profile
from moesim.cost.model import CostModel

__all__ = ["CostModel", "model_for_gpu", "model_from_profile"]
