"""Designing a MobileNet for a latency budget on the engine it will ship on: latency tables
measured there (`latency`), NetAdapt's layer-by-layer width cuts (`adapt`) and a platform-aware
architecture search (`search`). Above `train` and `deploy`, which it uses."""
