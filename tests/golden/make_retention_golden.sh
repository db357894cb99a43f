#!/usr/bin/env bash
# Regenerate tests/golden/retention_expected.json with restic's own policy code (the oracle),
# not with ours. Needs Go (Debian: apt-get install golang-go) and a restic checkout:
#   tests/golden/make_retention_golden.sh /path/to/restic
# restic's internal/data/snapshot_policy.go is compiled in a temporary directory together with
# the few types it uses (stubs below); nothing of restic is copied into this repository.
# Each case is evaluated with TZ set to the policy's zone: restic on a host in that zone, where
# a snapshot's stored time parses into the local zone (Go's time.Parse), so AddDate and the
# period functions follow the zone's DST rules.
set -euo pipefail
RESTIC=${1:?usage: $0 RESTIC_CHECKOUT}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
POLICY=$(git -C "$RESTIC" show HEAD:internal/data/snapshot_policy.go 2>/dev/null || cat "$RESTIC/internal/data/snapshot_policy.go")
printf '%s\n' "$POLICY" | sed -e 's/^package data/package main/' \
  -e '/"github.com\/restic\/restic\/internal\/debug"/d' -e 's/debug\.Log(/debugLog(/' > "$WORK/policy.go"
cat > "$WORK/stubs.go" <<'GO'
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

type ID struct{ n int }

func (i *ID) Str() string { return fmt.Sprint(i.n) }

type TagList []string
type Snapshot struct {
	Time time.Time
	Tags []string
	id   *ID
}

func (sn *Snapshot) HasTags(l []string) bool { return false }

type Snapshots []*Snapshot

func (sn Snapshots) Len() int           { return len(sn) }
func (sn Snapshots) Less(i, j int) bool { return sn[i].Time.After(sn[j].Time) }
func (sn Snapshots) Swap(i, j int)      { sn[i], sn[j] = sn[j], sn[i] }

type Duration struct{ Hours, Days, Months, Years int }

func (d Duration) Zero() bool { return d == Duration{} }
func (d Duration) String() string {
	s := ""
	if d.Years != 0 {
		s += fmt.Sprintf("%dy", d.Years)
	}
	if d.Months != 0 {
		s += fmt.Sprintf("%dm", d.Months)
	}
	if d.Days != 0 {
		s += fmt.Sprintf("%dd", d.Days)
	}
	if d.Hours != 0 {
		s += fmt.Sprintf("%dh", d.Hours)
	}
	return s
}

func debugLog(string, ...interface{}) {}

type Case struct {
	Policy struct {
		Last, Hourly, Daily, Weekly, Monthly, Yearly int
		Within                                       Duration
	}
	Times []string // RFC 3339 with the offset the snapshot was taken at
}

func main() {
	var c Case
	if err := json.NewDecoder(os.Stdin).Decode(&c); err != nil {
		panic(err)
	}
	var list Snapshots
	for i, t := range c.Times {
		parsed, err := time.Parse(time.RFC3339, t) // the local zone when the offset is one of its own
		if err != nil {
			panic(err)
		}
		list = append(list, &Snapshot{Time: parsed, id: &ID{i}})
	}
	p := ExpirePolicy{Last: c.Policy.Last, Hourly: c.Policy.Hourly, Daily: c.Policy.Daily,
		Weekly: c.Policy.Weekly, Monthly: c.Policy.Monthly, Yearly: c.Policy.Yearly, Within: c.Policy.Within}
	_, _, reasons := ApplyPolicy(list, p)
	out := map[string][]string{}
	for _, r := range reasons {
		out[c.Times[r.Snapshot.id.n]] = r.Matches
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
GO
(cd "$WORK" && cat > go.mod <<'MOD'
module oracle

go 1.19
MOD
go build -o oracle . )
"$HERE/../../.venv/bin/python" "$HERE/retention_golden.py" --oracle "$WORK/oracle"
