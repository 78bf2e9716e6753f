"""What every room needs and nothing that knows a model or a codec: the record, the TensorBoard layout, and four
independent sub-packages (config, data, runtime, storage). Imports nothing of divcfg outside itself.
"""
