"""Fine-tuning: freezing, strategies and their stages, the stage cache, compiled-model reuse, the rate finder."""
