"""The trainer that runs in training pods: data, model, methods, Ray Train loop, evaluation, export."""
