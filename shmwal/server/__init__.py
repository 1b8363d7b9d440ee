"""The broker process's jobs (``shmwal/broker.py`` is its entry point and loop).

* ``main``      the broker process's command line and life cycle
* ``recovery``  making a topic consistent at broker start
* ``verify``    reading a namespace's files without a broker (``shmwal stat | verify``)
"""
