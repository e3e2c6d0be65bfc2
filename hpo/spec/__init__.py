"""What a study is, as written in its file: settings, search space, sampler, pruner, data.

Parsing and checking only: nothing here opens a database, trains or tracks.
"""
