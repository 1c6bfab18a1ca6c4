from curricula.tasks import UniformTaskSampler, heldout_tasks


def test_heldout_set_is_fixed_and_disjoint_from_training_seeds():
    a = heldout_tasks("kbsearch", [1, 2], 5, seed_offset=10_000_000)
    b = heldout_tasks("kbsearch", [1, 2], 5, seed_offset=10_000_000)
    assert [t.id for t in a] == [t.id for t in b] and len({t.id for t in a}) == 10
    assert [t.difficulty for t in a] == [1] * 5 + [2] * 5
    train = UniformTaskSampler("kbsearch", [1, 2], seed=0, seed_limit=10_000_000).sample(200)
    assert not {t.id for t in train} & {t.id for t in a}


def test_sampler_resumes_the_same_stream_from_its_state():
    sampler = UniformTaskSampler("kbsearch", [1, 2, 3], seed=4, seed_limit=1000)
    sampler.sample(3)
    state = sampler.state_dict()
    expected = [t.id for t in sampler.sample(5)]
    fresh = UniformTaskSampler("kbsearch", [1, 2, 3], seed=99, seed_limit=1000)
    fresh.load_state_dict(state)
    assert [t.id for t in fresh.sample(5)] == expected
