//! Tests of the sweep engine. Deterministic behaviour follows W&B's sweep
//! engine (grid order and dedupe, type inference, validation rules, Hyperband
//! brackets), written here from its documented semantics; random distributions
//! are checked statistically against their definitions with fixed seeds.

use super::command::{build_argv, offline_context, py_float};
use super::expand::adaptive_trial;
use super::*;
use crate::ids::SweepId;
use crate::rng::Rng;
use serde_json::{json, Value};

fn yaml(s: &str) -> SweepSpec {
    match parse(s, Format::Yaml) {
        Ok(p) => p.spec,
        Err(e) => panic!("spec did not parse: {e}"),
    }
}

fn yaml_err(s: &str) -> Invalid {
    match parse(s, Format::Yaml) {
        Ok(_) => panic!("spec parsed but should not have"),
        Err(e) => e,
    }
}

fn sid() -> SweepId {
    SweepId::for_name("t")
}

#[test]
fn type_inference_follows_wandb() {
    let s = yaml(
        "method: random\nrun_cap: 1\nprogram: t.py\nparameters:\n  a: {value: 3}\n  b: {values: [1, 2]}\n  c: {min: 1, max: 5}\n  d: {min: 0.1, max: 1}\n  e: {values: [x, y], probabilities: [0.3, 0.7]}\n  f: {mu: 0, sigma: 2}\n  g: {min: 0, max: 10, q: 2}\n",
    );
    let names: Vec<&str> = s.parameters.iter().map(|(_, p)| p.name()).collect();
    assert_eq!(
        names,
        [
            "constant",
            "categorical",
            "int_uniform",
            "uniform",
            "categorical_w_probabilities",
            "normal",
            "q_uniform"
        ]
    );
}

#[test]
fn grid_is_cartesian_in_wandb_order_with_duplicates_removed() {
    // W&B's engine sorts parameter names (a before z) and varies the last fastest.
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  z: {values: [1, 2]}\n  a: {values: [x, y, x]}\n");
    let e = expand(&s, &sid()).unwrap();
    let got: Vec<Value> = e.trials.iter().map(|t| t.params.clone()).collect();
    assert_eq!(
        got,
        vec![
            json!({"a":"x","z":1}),
            json!({"a":"x","z":2}),
            json!({"a":"y","z":1}),
            json!({"a":"y","z":2})
        ]
    );
    assert_eq!(e.jobs.len(), 4);
    // 1 and 1.0 are one point to W&B; the later spelling is the one it passes.
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  a: {values: [1, 1.0, 2]}\n");
    let got: Vec<Value> = expand(&s, &sid())
        .unwrap()
        .trials
        .iter()
        .map(|t| t.params["a"].clone())
        .collect();
    assert_eq!(got, vec![json!(1.0), json!(2)]);
}

#[test]
fn nested_grid_parameters_sort_inside_their_parent() {
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  opt:\n    parameters:\n      lr: {values: [1, 2]}\n      beta: {values: [3, 4]}\n  bs: {values: [8, 16]}\n");
    let got: Vec<Value> = expand(&s, &sid())
        .unwrap()
        .trials
        .iter()
        .map(|t| t.params.clone())
        .collect();
    // bs < opt; inside opt, beta < lr: bs slowest, opt.lr fastest.
    assert_eq!(got[0], json!({"bs": 8, "opt": {"beta": 3, "lr": 1}}));
    assert_eq!(got[1], json!({"bs": 8, "opt": {"beta": 3, "lr": 2}}));
    assert_eq!(got[2], json!({"bs": 8, "opt": {"beta": 4, "lr": 1}}));
    assert_eq!(got[4], json!({"bs": 16, "opt": {"beta": 3, "lr": 1}}));
}

#[test]
fn grid_expands_int_uniform_and_q_uniform() {
    // q_uniform is numpy's arange(min, max, q): max excluded, values as numpy computes them.
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  n: {min: 1, max: 3}\n  lr: {distribution: q_uniform, min: 0.1, max: 0.3, q: 0.1}\n");
    let e = expand(&s, &sid()).unwrap();
    let ns: Vec<Value> = e.trials.iter().map(|t| t.params["n"].clone()).collect();
    assert_eq!(
        ns,
        vec![json!(1), json!(2), json!(3), json!(1), json!(2), json!(3)]
    );
    let lrs: Vec<f64> = e
        .trials
        .iter()
        .step_by(3)
        .map(|t| t.params["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, vec![0.1, 0.2]);
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  x: {distribution: q_uniform, min: 0.1, max: 0.8, q: 0.2}\n  k: {distribution: q_uniform, min: 0, max: 6, q: 2}\n  f: {distribution: q_uniform, min: 0, max: 2}\n");
    let e = expand(&s, &sid()).unwrap();
    let col = |k: &str| -> Vec<Value> {
        let mut v: Vec<Value> = Vec::new();
        for t in &e.trials {
            if !v.contains(&t.params[k]) {
                v.push(t.params[k].clone());
            }
        }
        v
    };
    assert_eq!(
        col("x"),
        vec![
            json!(0.1),
            json!(0.30000000000000004),
            json!(0.5000000000000001),
            json!(0.7000000000000001)
        ]
    );
    assert_eq!(col("k"), vec![json!(0), json!(2), json!(4)]);
    // W&B's default q is 1.0: floats.
    assert_eq!(col("f"), vec![json!(0.0), json!(1.0)]);
}

#[test]
fn a_seed_parameter_with_values_is_the_seed_axis() {
    let p = parse("method: grid\nprogram: t.py\nparameters:\n  width: {values: [8, 16]}\n  seed: {values: [11, 22, 33]}\n", Format::Yaml).unwrap();
    assert_eq!(p.spec.liandan.seeds, vec![11, 22, 33]);
    assert!(p.spec.parameters.iter().all(|(n, _)| n != "seed"));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("parameters.seed: 3 values used as the seed axis")),
        "{:?}",
        p.warnings
    );
    let e = expand(&p.spec, &sid()).unwrap();
    assert_eq!(e.trials.len(), 2);
    // W&B's order: seed sorts before width, so it varies slowest.
    let order: Vec<(i64, Value)> = e
        .jobs
        .iter()
        .map(|j| (j.seed, e.trials[j.trial_index].params["width"].clone()))
        .collect();
    assert_eq!(
        order[..3],
        [(11, json!(8)), (11, json!(16)), (22, json!(8))]
    );
    let argv = build_argv(
        &p.spec,
        &e.trials[0].params,
        11,
        &offline_context(&|_| None),
    )
    .unwrap();
    assert_eq!(
        argv,
        ["/usr/bin/env", "python", "t.py", "--seed=11", "--width=8"]
    );
    // run_cap counts runs: W&B's first four.
    let s = yaml("method: grid\nprogram: t.py\nrun_cap: 4\nparameters:\n  width: {values: [8, 16]}\n  seed: {values: [11, 22, 33]}\n");
    let e = expand(&s, &sid()).unwrap();
    let seeds: Vec<i64> = e.jobs.iter().map(|j| j.seed).collect();
    assert_eq!(seeds, [11, 11, 22, 22]);
    // Kept ordinary on request, or when it is a distribution.
    let p = parse("method: grid\nprogram: t.py\nparameters:\n  seed: {values: [1, 2]}\nliandan: {seed_axis: false}\n", Format::Yaml).unwrap();
    assert_eq!(p.spec.liandan.seeds, vec![0]);
    assert_eq!(expand(&p.spec, &sid()).unwrap().jobs.len(), 2);
    let p = parse(
        "method: random\nprogram: t.py\nrun_cap: 3\nparameters:\n  seed: {min: 0, max: 100}\n",
        Format::Yaml,
    )
    .unwrap();
    assert!(
        p.warnings.iter().any(|w| w.contains("liandan.seeds")),
        "{:?}",
        p.warnings
    );
    let p = parse(
        "method: grid\nprogram: t.py\nparameters:\n  a: {values: [1]}\n  seed: {value: 5}\n",
        Format::Yaml,
    )
    .unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("no seed-to-seed spread")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn without_liandan_seeds_nothing_is_added_to_the_command_line() {
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  lr: {values: [0.1]}\n");
    let e = expand(&s, &sid()).unwrap();
    assert_eq!(e.jobs[0].seed, 0);
    let argv = build_argv(&s, &e.trials[0].params, 0, &offline_context(&|_| None)).unwrap();
    assert_eq!(argv, ["/usr/bin/env", "python", "t.py", "--lr=0.1"]);
    let s = yaml(
        "method: grid\nprogram: t.py\nparameters:\n  lr: {values: [0.1]}\nliandan: {seeds: [3]}\n",
    );
    let argv = build_argv(
        &s,
        &expand(&s, &sid()).unwrap().trials[0].params,
        3,
        &offline_context(&|_| None),
    )
    .unwrap();
    assert_eq!(
        argv,
        ["/usr/bin/env", "python", "t.py", "--lr=0.1", "--seed=3"]
    );
}

#[test]
fn random_without_run_cap_is_lazy() {
    let p = parse(
        "method: random\nprogram: t.py\nparameters:\n  lr: {min: 0.0, max: 1.0}\n",
        Format::Yaml,
    )
    .unwrap();
    assert!(p.spec.is_lazy());
    let e = expand(&p.spec, &sid()).unwrap();
    assert!(e.trials.is_empty() && e.jobs.is_empty());
    // Draw k is the same point an up-front expansion draws k-th.
    let capped = yaml(
        "method: random\nprogram: t.py\nrun_cap: 3\nparameters:\n  lr: {min: 0.0, max: 1.0}\n",
    );
    let up_front = expand(&capped, &sid()).unwrap();
    for k in 0..3 {
        assert_eq!(
            expand::random_params(&p.spec, k as u64),
            up_front.trials[k].params
        );
    }
}

#[test]
fn yaml_is_read_as_pyyaml_reads_it() {
    let p = parse("method: grid\nprogram: t.py\nparameters:\n  flag: {values: [on, off]}\n  lr: {values: [1e-5, 1.0e-5]}\n  n: {value: 010}\n", Format::Yaml).unwrap();
    let e = expand(&p.spec, &sid()).unwrap();
    let argv = build_argv(&p.spec, &e.trials[0].params, 0, &offline_context(&|_| None)).unwrap();
    assert_eq!(
        argv,
        [
            "/usr/bin/env",
            "python",
            "t.py",
            "--flag=True",
            "--lr=1e-5",
            "--n=8"
        ]
    );
    // In a numeric field the string is taken as the number, with a warning naming the key.
    let p = parse(
        "method: random\nrun_cap: 1\nprogram: t.py\nparameters:\n  lr: {min: 1e-5, max: 0.1}\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        p.spec.parameters[0].1,
        Param::Uniform {
            min: 1e-5,
            max: 0.1
        }
    );
    assert!(
        p.warnings.iter().any(|w| w.contains("parameters.lr.min")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn grid_with_continuous_distribution_names_the_parameter() {
    // Refused by validation itself, so `validate` and `submit` agree.
    let e = yaml_err("method: grid\nprogram: t.py\nparameters:\n  lr: {min: 0.1, max: 0.3}\n");
    assert_eq!(e.path, "parameters.lr");
    assert!(e.message.contains("uniform"), "{e}");
    let e = yaml_err("method: grid\nprogram: t.py\nparameters:\n  o:\n    parameters:\n      lr: {distribution: normal}\n");
    assert_eq!(e.path, "parameters.o.parameters.lr");
}

#[test]
fn nested_parameters_become_nested_values() {
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  opt:\n    parameters:\n      name: {values: [sgd, adam]}\n      lr: {value: 0.1}\n  bs: {value: 32}\n");
    let e = expand(&s, &sid()).unwrap();
    assert_eq!(
        e.trials[0].params,
        json!({"opt": {"name": "sgd", "lr": 0.1}, "bs": 32})
    );
    assert_eq!(e.trials.len(), 2);
}

#[test]
fn seeds_multiply_jobs_and_ids_are_unique_and_stable() {
    let s = yaml("method: grid\nprogram: t.py\nparameters:\n  a: {values: [1, 2, 3]}\nliandan:\n  seeds: [0, 1, 42]\n");
    let e = expand(&s, &sid()).unwrap();
    assert_eq!(e.jobs.len(), 9);
    let mut ids: Vec<_> = e.jobs.iter().map(|j| j.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9);
    assert_eq!(e, expand(&s, &sid()).unwrap());
    let s2 = yaml("method: grid\nprogram: t.py\nparameters:\n  a: {values: [1, 2, 3]}\nliandan:\n  seeds: 4\n");
    assert_eq!(s2.liandan.seeds, vec![0, 1, 2, 3]);
}

#[test]
fn errors_name_key_path_and_line() {
    let cases: &[(&str, &str, Option<usize>)] = &[
        ("method: grid\nprogram: t.py\nparameters:\n  lr:\n    min: 0.1\n    max: abc\n", "parameters.lr.max", Some(6)),
        ("method: grid\nprogram: t.py\nparamters:\n  a: {value: 1}\n", "paramters", Some(3)),
        ("method: sideways\nparameters:\n  a: {value: 1}\n", "method", Some(1)),
        ("method: grid\nprogram: t.py\nparameters:\n  a:\n    distribution: gaussian\n", "parameters.a.distribution", Some(5)),
        ("method: grid\nprogram: t.py\nparameters:\n  a:\n    values: [1]\n    bogus: 2\n", "parameters.a.bogus", Some(6)),
        ("method: grid\nprogram: t.py\nparameters:\n  a: {values: [1], probabilities: [0.5]}\n", "parameters.a.probabilities", Some(4)),
        ("method: grid\nprogram: t.py\nparameters:\n  a: {value: 1}\nliandan:\n  seeds: [1, 1]\n", "liandan.seeds[1]", Some(6)),
        ("method: grid\nprogram: t.py\nparameters:\n  a: {value: 1}\nliandan:\n  metric_pattern: 'loss=([0-9.]+)'\n", "liandan.metric_pattern", Some(6)),
        ("method: grid\nparameters:\n  a: {value: 1}\n", "program", None),
        ("method: grid\nprogram: t.py\nparameters:\n  seed: {values: [1, 2]}\nliandan:\n  seeds: 2\n", "parameters.seed", Some(4)),
        ("method: grid\nprogram: t.py\nparameters:\n  1lr: {values: [1, 2]}\n", "parameters.1lr", Some(4)),
        ("method: grid\nprogram: t.py\nparameters:\n  learning rate: {values: [1, 2]}\n", "parameters.learning rate", Some(4)),
        ("method: grid\nprogram: t.py\nparameters:\n  a: {value: 1}\nliandan:\n  env: {LIANDAN_SEED: '3'}\n", "liandan.env.LIANDAN_SEED", Some(6)),
        ("method: bayes\nprogram: t.py\nparameters:\n  a: {min: 0.0, max: 1.0}\n", "metric", None),
    ];
    for (text, path, line) in cases {
        let e = yaml_err(text);
        assert_eq!(&e.path, path, "{text}: {e}");
        assert_eq!(e.line, *line, "{text}: {e}");
        assert!(!e.message.is_empty());
    }
}

#[test]
fn adaptive_methods_expand_to_nothing_up_front() {
    for m in ["bayes", "tpe"] {
        let s = yaml(&format!("method: {m}\nprogram: t.py\nmetric: {{name: loss, goal: minimize}}\nparameters:\n  lr: {{distribution: log_uniform_values, min: 0.0001, max: 0.1}}\n"));
        let e = expand(&s, &sid()).unwrap();
        assert!(e.trials.is_empty() && e.jobs.is_empty());
        assert!(
            e.warnings.iter().any(|w| w.contains("as results arrive")),
            "{:?}",
            e.warnings
        );
    }
    let e = yaml_err("method: tpe\nprogram: t.py\nparameters:\n  a: {min: 0.0, max: 1.0}\n");
    assert_eq!(e.path, "metric");
}

#[test]
fn adaptive_trials_get_distinct_ids_even_for_equal_params() {
    let params = serde_json::json!({"a": 1});
    let (t0, j0) = adaptive_trial(&sid(), 0, params.clone(), &[1, 2]);
    let (t1, j1) = adaptive_trial(&sid(), 1, params, &[1, 2]);
    assert_ne!(t0.id, t1.id);
    assert_eq!(j0.len(), 2);
    assert!(j0.iter().all(|j| j.trial == t0.id && j.trial_index == 0));
    assert_ne!(j0[0].id, j1[0].id);
}

#[test]
fn metric_impute_and_objective_parse() {
    let s = yaml("method: bayes\nprogram: t.py\nmetric: {name: loss, impute: best, impute_while_running: latest}\nparameters:\n  a: {min: 0.0, max: 1.0}\nliandan: {objective: iqm}\n");
    let m = s.metric.unwrap();
    assert_eq!(m.impute, spec::Impute::Best);
    assert_eq!(m.impute_while_running, Some(spec::Impute::Latest));
    assert_eq!(s.liandan.objective, spec::Objective::Iqm);
    let s = yaml("method: bayes\nprogram: t.py\nmetric: {name: loss, impute_while_running: false}\nparameters:\n  a: {min: 0.0, max: 1.0}\n");
    assert_eq!(s.metric.unwrap().impute_while_running, None);
    for (text, path) in [
        ("method: bayes\nprogram: t.py\nmetric: {name: loss, impute: mean}\nparameters:\n  a: {min: 0.0, max: 1.0}\n", "metric.impute"),
        ("method: bayes\nprogram: t.py\nmetric: {name: loss, impute_while_running: 3}\nparameters:\n  a: {min: 0.0, max: 1.0}\n", "metric.impute_while_running"),
        ("method: bayes\nprogram: t.py\nmetric: {name: loss}\nparameters:\n  a: {min: 0.0, max: 1.0}\nliandan: {objective: max}\n", "liandan.objective"),
        ("method: grid\nprogram: t.py\nparameters:\n  a: {value: 1}\nearly_terminate: {type: hyperband, min_iter: 3}\n", "metric"),
        ("method: grid\nprogram: t.py\nmetric: {name: loss}\nparameters:\n  a: {value: 1}\nearly_terminate: {type: envelope, min_iter: 3}\n", "early_terminate.type"),
    ] {
        assert_eq!(yaml_err(text).path, path, "{text}");
    }
}

#[test]
fn deprecated_distributions_warn() {
    let p = parse("method: random\nrun_cap: 2\nprogram: t.py\nparameters:\n  lr: {distribution: log_uniform, min: -5, max: -1}\n", Format::Yaml).unwrap();
    assert!(
        p.warnings.iter().any(|w| w.contains("deprecated")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn hyperband_brackets() {
    // W&B's engine tests: max_iter 81, s 3, eta 3 → 3, 9, 27; max_iter 18, s 2 → 2, 6;
    // max_iter 5, eta 2, s 2 → 1, 2; min_iter 3, eta 3 → 3, 9, 27, ... (s ignored).
    let et = |e: &str| {
        yaml(&format!("method: grid\nprogram: t.py\nmetric: {{name: loss}}\nparameters:\n  a: {{value: 1}}\nearly_terminate: {e}\n"))
            .early_terminate
            .unwrap()
            .brackets()
    };
    assert_eq!(
        et("{type: hyperband, max_iter: 81, eta: 3, s: 3}"),
        vec![3, 9, 27]
    );
    assert_eq!(et("{type: hyperband, max_iter: 27, s: 2}"), vec![3, 9]);
    assert_eq!(
        et("{type: hyperband, max_iter: 18, eta: 3, s: 2}"),
        vec![2, 6]
    );
    assert_eq!(
        et("{type: hyperband, max_iter: 5, eta: 2, s: 2}"),
        vec![1, 2]
    );
    let min = et("{type: hyperband, min_iter: 3, eta: 3}");
    assert_eq!(min[..4], [3, 9, 27, 81]);
    assert_eq!(et("{type: hyperband, min_iter: 3, eta: 3, s: 2}"), min);
    assert!(min.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(et("{type: asha, min_iter: 1, eta: 2}")[..3], [1, 2, 4]);
    let e = yaml_err("method: grid\nprogram: t.py\nmetric: {name: loss}\nparameters:\n  a: {value: 1}\nearly_terminate: {type: hyperband, max_iter: 27}\n");
    assert_eq!(e.path, "early_terminate.s");
    let e = yaml_err("method: grid\nprogram: t.py\nmetric: {name: loss}\nparameters:\n  a: {value: 1}\nearly_terminate: {type: hyperband, min_iter: 3, eta: 1}\n");
    assert_eq!(e.path, "early_terminate.eta");
}

#[test]
fn toml_specs_parse_like_yaml() {
    let t = "method = \"grid\"\nprogram = \"t.py\"\n[parameters.lr]\nvalues = [0.1, 0.01]\n[liandan]\nseeds = 2\n";
    let s = parse(t, Format::Toml).unwrap().spec;
    assert_eq!(expand(&s, &sid()).unwrap().jobs.len(), 4);
    let e = parse(
        "method = \"grid\"\nprogram = \"t.py\"\nfoo = 1\n[parameters.a]\nvalue = 1\n",
        Format::Toml,
    )
    .unwrap_err();
    assert_eq!(e.path, "foo");
}

#[test]
fn command_macros_expand_as_wandb() {
    let s = yaml(
        "method: grid\nprogram: train.py\ncommand: ['${env}', '${interpreter}', '${program}', '--data=${envvar:DATA}', '${args}']\nparameters:\n  lr: {value: 0.00001}\n  flag: {value: true}\n  name: {value: '; rm -rf /'}\n",
    );
    let e = expand(&s, &sid()).unwrap();
    let env = |k: &str| (k == "DATA").then(|| "/data".to_string());
    let argv = build_argv(&s, &e.trials[0].params, 7, &offline_context(&env)).unwrap();
    assert_eq!(
        argv,
        [
            "/usr/bin/env",
            "python",
            "train.py",
            "--data=/data",
            "--flag=True",
            "--lr=1e-05",
            "--name=; rm -rf /"
        ]
    );

    let s2 = yaml("method: grid\nprogram: p\ncommand: ['${program}', '${args_no_boolean_flags}', '${args_no_hyphens}', '${args_json}', '${args_no_equals}', '${nonsense}', '--p=${program}']\nparameters:\n  a: {value: false}\n  b: {value: true}\n  l: {value: [1, 'x', null]}\nliandan: {seeds: [0]}\n");
    let argv = build_argv(
        &s2,
        &expand(&s2, &sid()).unwrap().trials[0].params,
        0,
        &offline_context(&|_| None),
    )
    .unwrap();
    assert_eq!(
        argv,
        [
            "p",
            "--b",
            "--l=[1, 'x', None]",
            "--seed=0",
            "a=False",
            "b=True",
            "l=[1, 'x', None]",
            "seed=0",
            r#"{"a": false, "b": true, "l": [1, "x", null], "seed": 0}"#,
            "--a",
            "False",
            "--b",
            "True",
            "--l",
            "[1, 'x', None]",
            "--seed",
            "0",
            "--p=${program}"
        ]
    );

    let missing = build_argv(&s, &e.trials[0].params, 0, &offline_context(&|_| None)).unwrap_err();
    assert!(missing.to_string().contains("DATA"));
}

#[test]
fn trainer_extension_runs_the_builtin_trainer() {
    let s = yaml("method: grid\nparameters:\n  lr: {value: 0.1}\nliandan:\n  trainer: true\n");
    assert_eq!(s.program.as_deref(), Some("liandan-train"));
    let argv = build_argv(&s, &json!({"lr": 0.1}), 3, &offline_context(&|_| None)).unwrap();
    assert_eq!(argv, ["liandan-train", "--lr=0.1", "--seed=3"]);
}

#[test]
fn python_float_repr() {
    for (x, s) in [
        (0.1, "0.1"),
        (1.0, "1.0"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1e16, "1e+16"),
        (123456.5, "123456.5"),
        (-2.5e-7, "-2.5e-07"),
    ] {
        assert_eq!(py_float(x), s, "{x}");
    }
}

/// Draws n values of a parameter from fresh keyed generators.
fn draws(p: &Param, n: usize) -> Vec<f64> {
    let mut rng = Rng::keyed("stat-test", &[1234]);
    (0..n)
        .map(|_| expand::sample(p, &mut rng).as_f64().unwrap())
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Compares the empirical CDF with the exact one at the given points
/// (a Kolmogorov-Smirnov style bound: 0.02 at n = 20,000 is > 2.8 sigma).
fn check_cdf(xs: &[f64], cdf: &dyn Fn(f64) -> f64, points: &[f64]) {
    for &x in points {
        let emp = xs.iter().filter(|&&v| v <= x).count() as f64 / xs.len() as f64;
        let exact = cdf(x);
        assert!(
            (emp - exact).abs() < 0.02,
            "at {x}: empirical {emp}, exact {exact}"
        );
    }
}

#[test]
fn continuous_distributions_match_their_definitions() {
    use statrs::distribution::{Beta, ContinuousCDF, LogNormal, Normal};
    const N: usize = 20_000;
    let u = draws(&Param::Uniform { min: 2.0, max: 6.0 }, N);
    check_cdf(
        &u,
        &|x| ((x - 2.0) / 4.0).clamp(0.0, 1.0),
        &[2.5, 3.0, 4.0, 5.5],
    );
    let lu = draws(
        &Param::LogUniformValues {
            min: 1e-4,
            max: 1e-1,
        },
        N,
    );
    check_cdf(
        &lu,
        &|x| ((x.ln() - 1e-4f64.ln()) / (1e-1f64.ln() - 1e-4f64.ln())).clamp(0.0, 1.0),
        &[3e-4, 1e-3, 1e-2, 5e-2],
    );
    let le = draws(
        &Param::LogUniform {
            min: -4.0,
            max: 0.0,
        },
        N,
    );
    check_cdf(
        &le,
        &|x| ((x.ln() + 4.0) / 4.0).clamp(0.0, 1.0),
        &[0.05, 0.2, 0.6],
    );
    let inv = draws(
        &Param::InvLogUniformValues {
            min: 0.01,
            max: 1.0,
        },
        N,
    );
    check_cdf(
        &inv,
        &|x| ((x.ln() - 0.01f64.ln()) / (0.0 - 0.01f64.ln())).clamp(0.0, 1.0),
        &[0.02, 0.1, 0.5],
    );
    let n = draws(
        &Param::Normal {
            mu: 1.0,
            sigma: 2.0,
        },
        N,
    );
    let nd = Normal::new(1.0, 2.0).unwrap();
    check_cdf(&n, &|x| nd.cdf(x), &[-2.0, 0.0, 1.0, 3.0]);
    let ln = draws(
        &Param::LogNormal {
            mu: 0.0,
            sigma: 0.5,
        },
        N,
    );
    let lnd = LogNormal::new(0.0, 0.5).unwrap();
    check_cdf(&ln, &|x| lnd.cdf(x), &[0.5, 1.0, 2.0]);
    for (a, b) in [(2.0, 5.0), (0.5, 0.5), (1.0, 1.0)] {
        let bt = draws(&Param::Beta { a, b }, N);
        let bd = Beta::new(a, b).unwrap();
        check_cdf(&bt, &|x| bd.cdf(x), &[0.1, 0.3, 0.5, 0.8]);
    }
}

#[test]
fn quantized_and_discrete_distributions() {
    const N: usize = 20_000;
    let q = draws(
        &Param::QUniform {
            min: 0.0,
            max: 10.0,
            q: 2.5,
            integer: false,
            int_bounds: false,
        },
        N,
    );
    assert!(q
        .iter()
        .all(|x| (x / 2.5).fract() == 0.0 && (0.0..=10.0).contains(x)));
    let qn = draws(
        &Param::QNormal {
            mu: 0.0,
            sigma: 3.0,
            q: 1.0,
            integer: false,
        },
        N,
    );
    assert!(qn.iter().all(|x| x.fract() == 0.0));
    assert!(mean(&qn).abs() < 0.1);
    let qb = draws(
        &Param::QBeta {
            a: 2.0,
            b: 2.0,
            q: 0.1,
            integer: false,
        },
        N,
    );
    assert!(qb
        .iter()
        .all(|x| ((x * 10.0).round() - x * 10.0).abs() < 1e-9));
    let qlu = draws(
        &Param::QLogUniformValues {
            min: 1.0,
            max: 1000.0,
            q: 1.0,
            integer: false,
        },
        N,
    );
    assert!(qlu
        .iter()
        .all(|x| x.fract() == 0.0 && *x >= 1.0 && *x <= 1000.0));
    let qln = draws(
        &Param::QLogNormal {
            mu: 2.0,
            sigma: 0.3,
            q: 1.0,
            integer: false,
        },
        N,
    );
    assert!(qln.iter().all(|x| x.fract() == 0.0));
    let qlue = draws(
        &Param::QLogUniform {
            min: 0.0,
            max: 3.0,
            q: 1.0,
            integer: false,
        },
        N,
    );
    assert!(qlue
        .iter()
        .all(|x| x.fract() == 0.0 && *x >= 1.0 && *x <= 21.0));
    let ile = draws(&Param::InvLogUniform { min: 0.0, max: 2.0 }, N);
    assert!(ile.iter().all(|x| *x <= 1.0 && *x >= (-2f64).exp()));

    let mut rng = Rng::keyed("stat-test", &[9]);
    let mut counts = [0usize; 6];
    for _ in 0..60_000 {
        let v = expand::sample(&Param::IntUniform { min: 1, max: 6 }, &mut rng)
            .as_i64()
            .unwrap();
        counts[(v - 1) as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (9_500..10_500).contains(&c)),
        "{counts:?}"
    );

    let p = Param::CategoricalWProbabilities {
        values: vec![json!("a"), json!("b"), json!("c")],
        probabilities: vec![0.2, 0.5, 0.3],
    };
    let mut c = [0usize; 3];
    for _ in 0..20_000 {
        match expand::sample(&p, &mut rng).as_str().unwrap() {
            "a" => c[0] += 1,
            "b" => c[1] += 1,
            _ => c[2] += 1,
        }
    }
    for (got, want) in c.iter().zip([0.2, 0.5, 0.3]) {
        assert!((*got as f64 / 20_000.0 - want).abs() < 0.015, "{c:?}");
    }
}

#[test]
fn random_sampling_is_reproducible_and_seed_dependent() {
    let text = |seed: u64| {
        format!("method: random\nrun_cap: 20\nprogram: t.py\nparameters:\n  lr: {{distribution: log_uniform_values, min: 0.0001, max: 0.1}}\n  bs: {{values: [16, 32, 64]}}\nliandan:\n  sweep_seed: {seed}\n  seeds: 2\n")
    };
    let a = expand(&yaml(&text(1)), &sid()).unwrap();
    let b = expand(&yaml(&text(1)), &sid()).unwrap();
    let c = expand(&yaml(&text(2)), &sid()).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.trials[0].params, c.trials[0].params);
    assert_eq!(a.trials.len(), 10);
    assert_eq!(a.jobs.len(), 20);
}

/// Sweep files in the shapes published W&B projects use (the W&B docs' examples,
/// a nested config, command macros), each as a W&B user would write it.
#[test]
fn published_style_sweep_files_validate_and_expand() {
    let files = [
        // W&B quickstart style.
        "program: train.py\nmethod: grid\nmetric:\n  goal: minimize\n  name: loss\nparameters:\n  batch_size:\n    values: [16, 32, 64]\n  lr:\n    values: [0.1, 0.01, 0.001]\n  optimizer:\n    values: [adam, sgd]\n",
        // Random with log-scaled lr and a command using hydra-style arguments.
        "program: train.py\nmethod: random\nrun_cap: 30\nmetric:\n  name: val/accuracy\n  goal: maximize\nparameters:\n  learning_rate:\n    distribution: log_uniform_values\n    min: 1.0e-5\n    max: 1.0e-2\n  dropout:\n    distribution: uniform\n    min: 0.0\n    max: 0.5\n  epochs:\n    value: 10\ncommand:\n  - ${env}\n  - python\n  - ${program}\n  - ${args_no_hyphens}\n",
        // Nested parameters.
        "program: main.py\nmethod: grid\nparameters:\n  model:\n    parameters:\n      depth:\n        values: [2, 4]\n      width:\n        value: 128\n  data:\n    parameters:\n      augment:\n        values: [true, false]\n",
        // Bayes with hyperband, as half of published files look.
        "program: train.py\nmethod: bayes\nmetric:\n  name: val_loss\n  goal: minimize\nearly_terminate:\n  type: hyperband\n  min_iter: 3\nparameters:\n  lr:\n    min: 0.0001\n    max: 0.1\n  layers:\n    min: 1\n    max: 5\n",
    ];
    // Bayes proposes its trials while it runs: nothing up front.
    let expected_jobs = [18, 30, 4, 0];
    for (f, want) in files.iter().zip(expected_jobs) {
        let s = yaml(f);
        assert_eq!(expand(&s, &sid()).unwrap().jobs.len(), want, "{f}");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parsing_never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s, Format::Yaml);
            let _ = parse(&s, Format::Toml);
        }

        #[test]
        fn parsing_yamlish_never_panics(s in "(method|parameters|program|liandan|seeds|values|min|max|[a-z]{1,5}|: |\\n  |- |\\[|\\]|\\{|\\}|[0-9.e-]{1,6}|, ){0,60}") {
            let _ = parse(&s, Format::Yaml);
        }

        #[test]
        fn grid_job_count_is_product_times_seeds(sizes in proptest::collection::vec(1usize..4, 1..4), nseeds in 1usize..4) {
            let mut text = String::from("method: grid\nprogram: t.py\nparameters:\n");
            for (i, n) in sizes.iter().enumerate() {
                let vals: Vec<String> = (0..*n).map(|v| v.to_string()).collect();
                text.push_str(&format!("  p{i}: {{values: [{}]}}\n", vals.join(", ")));
            }
            text.push_str(&format!("liandan:\n  seeds: {nseeds}\n"));
            let spec = yaml(&text);
            let e = expand(&spec, &sid()).unwrap();
            prop_assert_eq!(e.jobs.len(), sizes.iter().product::<usize>() * nseeds);
            let mut pairs: Vec<(String, i64)> = e.jobs.iter().map(|j| (j.trial.to_string(), j.seed)).collect();
            pairs.sort();
            pairs.dedup();
            prop_assert_eq!(pairs.len(), e.jobs.len());
            prop_assert_eq!(e.clone(), expand(&spec, &sid()).unwrap());
        }
    }
}

#[test]
fn an_integer_q_gives_integer_samples_as_in_wandb() {
    // W&B's engine casts to int when q is an int (`astype(int)`), for every q-distribution.
    let s = yaml("method: random\nprogram: t.py\nrun_cap: 20\nparameters:\n  bs: {distribution: q_log_uniform_values, min: 16, max: 512, q: 16}\n  n: {distribution: q_normal, mu: 10, sigma: 3, q: 1}\n  f: {distribution: q_normal, mu: 10, sigma: 3, q: 0.5}\n");
    let e = expand(&s, &sid()).unwrap();
    for t in &e.trials {
        assert!(t.params["bs"].is_i64(), "{}", t.params);
        assert_eq!(t.params["bs"].as_i64().unwrap() % 16, 0);
        assert!(t.params["n"].is_i64(), "{}", t.params);
        assert!(t.params["f"].is_f64(), "{}", t.params);
    }
    let argv = build_argv(&s, &e.trials[0].params, 0, &offline_context(&|_| None)).unwrap();
    assert!(
        argv.iter()
            .any(|a| a.starts_with("--bs=") && !a.contains('.')),
        "{argv:?}"
    );
}

#[test]
fn a_metric_pattern_without_the_metrics_group_is_warned_about() {
    let p = parse("method: grid\nprogram: t.py\nmetric: {name: loss}\nparameters:\n  a: {value: 1}\nliandan:\n  metric_pattern: 'loss: (?P<val>[0-9.]+)'\n", Format::Yaml).unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("no group named \"loss\"")),
        "{:?}",
        p.warnings
    );
    let p = parse("method: grid\nprogram: t.py\nmetric: {name: loss}\nparameters:\n  a: {value: 1}\nliandan:\n  metric_pattern: 'loss: (?P<loss>[0-9.]+)'\n", Format::Yaml).unwrap();
    assert!(
        p.warnings.iter().all(|w| !w.contains("no group")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn every_error_of_a_file_is_told_at_once_in_file_order_with_suggestions() {
    let e = parse(
        "methd: grid\nprogram: t.py\nparamters: {}\nparameters:\n  lr: {min: 1, max: 0.5}\n  depth: {valuse: [1, 2]}\n  act: {values: [relu]}\nliandan:\n  seedz: 3\n",
        Format::Yaml,
    )
    .unwrap_err();
    let told: Vec<(String, Option<usize>)> =
        e.errors.iter().map(|e| (e.path.clone(), e.line)).collect();
    assert_eq!(
        told,
        [
            ("methd".to_string(), Some(1)),
            ("paramters".to_string(), Some(3)),
            ("parameters.lr.max".to_string(), Some(5)),
            ("parameters.depth.valuse".to_string(), Some(6)),
            ("liandan.seedz".to_string(), Some(9)),
            ("method".to_string(), None),
        ],
        "{e}"
    );
    let text = e.to_string();
    assert!(text.starts_with("6 problems:"), "{text}");
    assert!(text.contains("(did you mean `method`?)"), "{text}");
    assert!(text.contains("(did you mean `parameters`?)"), "{text}");
    assert!(text.contains("(did you mean `values`?)"), "{text}");
    assert!(text.contains("(did you mean `seeds`?)"), "{text}");
    // A word near nothing known gets no suggestion.
    assert_eq!(did_you_mean("zzzz", &["grid", "random"]), "");
    let e = yaml_err(
        "method: gird\nprogram: t.py\nparameters:\n  a: {distribution: unifrom, min: 0, max: 1}\n",
    );
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(e.errors[0].message.contains("did you mean `grid`"), "{e}");
    assert!(
        e.errors[1].message.contains("did you mean `uniform`"),
        "{e}"
    );
}

#[test]
fn the_metric_extensions_are_checked_past_other_errors() {
    // A misspelt method stops the spec being built; the bad pattern and the
    // metric-less require_metric are still told in the same run.
    let e = yaml_err(
        "method: gird\nprogram: t.py\nparameters:\n  a: {values: [1]}\nliandan:\n  metric_pattern: 'loss=(?P<loss'\n  require_metric: true\n",
    );
    let told: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        told,
        ["method", "liandan.metric_pattern", "liandan.require_metric"],
        "{e}"
    );
}

#[test]
fn a_grid_names_every_parameter_it_cannot_enumerate() {
    // Two continuous distributions, one of them nested, and probabilities:
    // each told, in file order, not just the first.
    let e = yaml_err(
        "method: grid\nprogram: t.py\nparameters:\n  lr: {min: 0.1, max: 1.0}\n  opt:\n    parameters:\n      mom: {distribution: normal, mu: 0, sigma: 1}\n  act: {values: [relu, tanh], probabilities: [0.5, 0.5]}\n  depth: {values: [1, 2]}\n",
    );
    let told: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        told,
        [
            "parameters.lr",
            "parameters.opt.parameters.mom",
            "parameters.act.probabilities"
        ],
        "{e}"
    );
    assert!(e.to_string().starts_with("3 problems:"), "{e}");
}

#[test]
fn what_a_submit_refuses_the_check_refuses() {
    // A grid over a continuous distribution, and a grid past the job limit:
    // `check` (validate's and submit's) refuses both.
    let e = check(
        "method: grid\nprogram: t.py\nparameters:\n  lr: {min: 0.1, max: 1.0}\n",
        Format::Yaml,
        "",
    )
    .unwrap_err();
    assert!(e.message.contains("cannot enumerate the continuous"), "{e}");
    let e = check(
        "method: grid\nprogram: t.py\nparameters:\n  a: {min: 1, max: 1000}\n  b: {min: 1, max: 1001}\n",
        Format::Yaml,
        "",
    )
    .unwrap_err();
    assert!(e.message.contains("more than the limit"), "{e}");
    let e = check(
        "method: grid\nprogram: t.py\nparameters:\n  a: {values: [1]}\n",
        Format::Yaml,
        "no spaces",
    )
    .unwrap_err();
    assert_eq!(e.path, "name", "{e}");
    let c = check(
        "method: grid\nprogram: t.py\nparameters:\n  a: {values: [1, 2]}\nliandan: {seeds: 3}\n",
        Format::Yaml,
        "",
    )
    .unwrap();
    assert_eq!((c.expansion.trials.len(), c.expansion.jobs.len()), (2, 6));
}

#[test]
fn an_error_is_told_once_even_when_its_line_is_unknown() {
    // Missing keys have no line, and TOML errors never do: each is told once.
    let e = yaml_err("program: t.py\n");
    assert_eq!(e.errors.len(), 2, "{e}");
    let e = parse(
        "methd = \"grid\"\nprogram = \"t.py\"\n[parameters]\na = {values = [1]}\n",
        Format::Toml,
    )
    .unwrap_err();
    assert_eq!(e.errors.len(), 2, "{e}");
    assert_eq!(
        e.errors.iter().filter(|x| x.path == "methd").count(),
        1,
        "{e}"
    );
}
