"""Scale-out: several monitors (workers) on one stream, merged by a reducer (docs/operations.md).

- :mod:`.wire`: the safe encoding of accumulators and results (JSON tree + raw buffers, no pickle)
- :mod:`.message`: the one message a worker sends (heartbeat: results batch, cumulative accumulators)
- :mod:`.worker`: the engine hook on the worker side (ZeroMQ PUSH)
- :mod:`.reducer`: ReducerEngine, which merges the workers into one monitor's results
"""
