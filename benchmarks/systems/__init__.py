"""The systems the benchmark times, one module each, behind the interface of :mod:`systems.base`.

- :mod:`systems.backends`: every hsds-backends backend and ``auto`` through one ``Reader``;
- :mod:`systems.hsds_h5pyd`: real HSDS via h5pyd (``h5pyd_client.py`` in HSDS's virtualenv);
- :mod:`systems.zarr_python`, :mod:`systems.tensorstore_zarr3`, :mod:`systems.dask_array`: the
  zarr copy of the grid, read in this process;
- :mod:`systems.memory`: the peak memory of one hsds-backends full read (``memory_probe.py``).
"""
