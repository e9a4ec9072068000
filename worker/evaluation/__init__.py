"""Safety evaluation: batched generation, ASR judges, over-refusal, the refusal-direction margin."""
