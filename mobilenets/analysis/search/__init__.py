"""Designing a MobileNet for a latency budget on the engine it will ship on: latency tables
measured there (`latency`, `engines`), NetAdapt's layer-by-layer width cuts (`adapt`) and a
platform-aware architecture search (`evolve`), with the short trainings they score candidates
by (`finetune`)."""
