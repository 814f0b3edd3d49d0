"""Ray Tune pickles the tuner's config (searcher, callbacks) when a search starts: with NSGA-II's
sampler, whose lock cannot be pickled, every `--sampler nsga2` search crashed there."""
import optuna
import pytest
from ray import cloudpickle

from nas import study as st
from nas.pareto import parse_objectives


@pytest.fixture
def nsga2_study():
    objectives = parse_objectives("miou,gmacs")
    study = optuna.create_study(directions=[o.direction for o in objectives],
                                sampler=st.make_sampler("nsga2", 0, objectives=objectives))
    with pytest.raises(TypeError, match="lock"):  # the premise: the study itself cannot travel
        cloudpickle.dumps(study)
    return study, objectives


def test_the_searcher_and_progress_callback_pickle_with_an_nsga2_study(nsga2_study):
    from nas.tune_adapters import FullTraining, ProgressCallback, StudySearcher

    study, objectives = nsga2_study
    searcher = StudySearcher(study, None, objectives, "me", lambda spec: None, FullTraining())
    progress = type("Progress", (), {"study": study, "running": 0})()
    for obj in (searcher, ProgressCallback(progress)):
        assert cloudpickle.loads(cloudpickle.dumps(obj)) is not None
    assert searcher.study is study  # pickling leaves the live searcher whole
