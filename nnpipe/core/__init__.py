"""The NumPy core: the network, its parts, and single-process training.

Nothing here imports Dask, MLflow or Prefect; every other layer builds on it.

- :mod:`.network` — a dense network as a spec plus one flat parameter vector ``theta``;
- :mod:`.activations` and :mod:`.losses` — registries of hidden activations and output heads;
- :mod:`.optimizers` and :mod:`.schedules` — pure updates on ``theta`` and learning-rate schedules;
- :mod:`.problem` — what to train, checked once (the value every loop takes);
- :mod:`.training` — the single-process loop, the reference every distributed mode is measured against;
- :mod:`.fused` — its default step loop: whole epochs with every buffer made once, bit-equal to the general loop;
- :mod:`.evaluation` — metrics of a network on arrays.
"""
