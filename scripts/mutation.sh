#!/usr/bin/env bash
# Mutation testing of the modules where a wrong value is silent (mutmut; the modules and
# the tests it runs are [tool.mutmut] in pyproject.toml), module by module within a time
# budget, under nice; then writes benchmarks/MUTATION.md (scripts/mutation_report.py).
# Not part of CI: run it on the final code of a change to one of these modules.
#
#   scripts/mutation.sh                      every module below, fresh
#   scripts/mutation.sh adaptive sampling    modules whose name contains these words
#
# Environment: MUTATION_BUDGET seconds per module (default 300; a module cut short is
# reported as such, with what it finished; mutant generation and the test map come before,
# within MUTATION_SETUP_BUDGET, default 1800), MUTATION_JOBS parallel mutants (default 2),
# MUTATION_KEEP=1 keeps earlier results in mutants/ and resumes the named modules: only
# their mutants without a verdict and their survivors run (a module cut by its budget
# goes on where it stopped).
set -uo pipefail
cd "$(dirname "$0")/.."

MODULES=(
    model_store_server.core.gate
    model_store_server.core.scheduler
    model_store_server.core.view_control
    model_store_server.core.worker_view
    model_store_server.core.fleet
    model_store_server.decision
    model_store_server.policies.recency
    model_store_server.policies.registry
    model_store_server.policies.base
    model_store_server.policies.greedy_dual
    model_store_server.policies.placement
    model_store_server.policies.adaptive
    model_store_server.policies.arrivals
    model_store_server.digests
    model_store_server.api.openai
    model_store_server.api.ollama
    model_swap.generation
    model_swap.requests_json
    model_swap.http_request
    model_swap.http_body
    inference_worker.sampling
    inference_worker.admission
    inference_worker.batch
)

budget=${MUTATION_BUDGET:-300}
jobs=${MUTATION_JOBS:-2}
setup_budget=${MUTATION_SETUP_BUDGET:-1800}
selected=()
if [ $# -eq 0 ]; then
    selected=("${MODULES[@]}")
fi
for word in "$@"; do # in the order given
    for module in "${MODULES[@]}"; do
        [[ "$module" == *"$word"* && " ${selected[*]} " != *" $module "* ]] && selected+=("$module")
    done
done
if [ ${#selected[@]} -eq 0 ]; then
    echo "no module matches: $*" >&2
    exit 2
fi

if [ "${MUTATION_KEEP:-0}" != 1 ]; then
    rm -rf mutants
fi
mkdir -p mutants
runs=mutants/runs.tsv
touch "$runs"
# Every invocation since mutants/ was fresh: the report names them all.
echo "MUTATION_KEEP=${MUTATION_KEEP:-0} MUTATION_BUDGET=$budget MUTATION_JOBS=$jobs scripts/mutation.sh $*" \
    >>mutants/commands.txt

# Mutant generation and mutmut's map of which test calls which function (one traced run of
# the selected tests) come first, outside the modules' budgets: on a busy machine they take
# minutes, which once used up a whole module's budget. A pattern that names no function
# makes mutmut stop after them (and after one clean run of the tests).
# Resumed (MUTATION_KEEP=1 with a map already made): each module's run updates the map
# for new tests itself.
if [ "${MUTATION_KEEP:-0}" != 1 ] || [ ! -f mutants/mutmut-stats.json ]; then
    echo "== generating mutants and mapping tests to functions (budget ${setup_budget}s)"
    started=$(date +%s)
    timeout --signal=INT --kill-after=30 "$setup_budget" \
        nice -n 10 uv run mutmut run --max-children "$jobs" "no_module_has_this_name.*" \
        >mutants/log-setup.txt 2>&1
    rc=$?
    if [ ! -f mutants/mutmut-stats.json ]; then
        echo "   mutmut's setup failed (exit $rc, see mutants/log-setup.txt)" >&2
        exit 1
    fi
    echo "   done in $(($(date +%s) - started))s"
fi
for module in "${selected[@]}"; do
    echo "== $module (budget ${budget}s)"
    started=$(date +%s)
    meta="mutants/${module//.//}.py.meta"
    names=("$module.*")
    if [ "${MUTATION_KEEP:-0}" = 1 ]; then
        # Resume: only the mutants without a verdict yet, the survivors and those no test
        # called if one does now (a test may have been added since); a pattern would
        # rerun every mutant from the start.
        mapfile -t names < <(python3 - "$meta" <<'PY'
import json, sys
try:
    codes = json.load(open(sys.argv[1]))["exit_code_by_key"]
    tested = json.load(open("mutants/mutmut-stats.json"))["tests_by_mangled_function_name"]
except (OSError, ValueError, KeyError):
    codes = None
if codes is None or all(code is None for code in codes.values()):
    print("ALL")
else:
    def again(name, code):
        return code in (None, 0) or (code == 33 and tested.get(name.rpartition("__mutmut_")[0]))
    print("\n".join(name for name, code in codes.items() if again(name, code)))
PY
        )
        [ "${names[0]:-}" = ALL ] && names=("$module.*")
    fi
    if grep -q '"exit_code_by_key": {}' "$meta" 2>/dev/null; then
        rc=nothing # no mutant (only declarations): a run would run every selected test instead
    elif [ ${#names[@]} -eq 0 ] || [ -z "${names[0]}" ]; then
        rc=0 # resumed: every mutant already has a verdict
    else
        # SIGINT lets mutmut stop its workers and keep every result it has (on a busy
        # machine that can take a minute; a kill while it saves would truncate its results).
        timeout --signal=INT --kill-after=120 "$budget" \
            nice -n 10 uv run mutmut run --max-children "$jobs" "${names[@]}" \
            >"mutants/log-$module.txt" 2>&1
        rc=$?
    fi
    seconds=$(($(date +%s) - started))
    if [ -f "$meta" ] && ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$meta" 2>/dev/null; then
        # Results cut off while being written: drop the module's mutants (made again next run).
        rm -f "$meta" "${meta%.meta}"
        rc="lost"
    fi
    case $rc in
        nothing) state="nothing to mutate" ;;
        0) state=complete ;;
        lost) state="results lost (mutmut was killed while saving them)" ;;
        124 | 130 | 137) state="budget of ${budget}s reached" ;;
        *) state="mutmut failed (exit $rc, see mutants/log-$module.txt)" ;;
    esac
    grep -v "^$module	" "$runs" >"$runs.new"
    printf '%s\t%s\t%s\n' "$module" "$seconds" "$state" >>"$runs.new"
    mv "$runs.new" "$runs"
    echo "   $state in ${seconds}s"
done

uv run python scripts/mutation_report.py --runs "$runs" --out benchmarks/MUTATION.md \
    --previous benchmarks/MUTATION.md \
    --command "$(paste -sd ';' mutants/commands.txt | sed 's/;/; then /g')" \
    "${MODULES[@]}"
