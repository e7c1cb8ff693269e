"""Data layer: read records in the formats people bring (formats), render them to ids and the loss mask (render),
and prepare a run's tokenized splits with their statistics (prepare)."""
