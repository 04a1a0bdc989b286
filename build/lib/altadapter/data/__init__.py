"""From tagged images to a training dataset and evaluation prompts: tags, records, converter, prompt sampler."""
