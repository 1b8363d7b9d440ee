"""The broker process's jobs (``shmwal/broker.py`` is its entry point and control loop).

* ``main``          the broker process's command line and life cycle
* ``startup``       lock, sweep what a killed broker left, recover every topic, listen
* ``recovery``      making one topic consistent at broker start
* ``registry``      topics and groups: which exist, their meta files and semaphores
* ``provisioning``  blocks for writers: on request, ahead of need, faulted in by a thread
* ``reclaim``       blocks every group has read past: a pure policy and the shell applying it
* ``fsync``         the fsync schedule (a thread of its own)
* ``verify``        reading a namespace's files without a broker (``shmwal stat | verify``)
"""
