"""lineside.edge: the line-side runtime (cameras, transport, workers, backends,
decisions, sinks, metrics, supervisor, benchmark). It never imports TensorFlow."""
