"""Run configs (``get_config()`` files, big_vision style) for ``hspg-asc train --config``.

* ``main.py``: the main job (HSPG, reduced CP-ResNet, built-in synthetic scenes).
* ``seed_tables.py``: the protocol and the cells of the seed's Tables 3 and 4.
* ``dcase2017/*.py``, ``dcase2018/*.py``: one file per cell of those tables.
"""
