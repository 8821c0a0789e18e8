"""The plan search behind `optadvise recommend`, one module per stage, data flowing one way.

target (the hardware and its host) -> layout (one validated parallel layout) -> space (the
plan dimensions and the global batch) -> search (batch geometry, pruning) -> rank
(objectives, scoring, distinct plans) -> explain (why, why not, suggestions) -> report.
"""
