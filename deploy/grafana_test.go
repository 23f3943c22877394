package deploy_test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type gridPos struct{ H, W, X, Y int }

type panel struct {
	ID          int               `json:"id"`
	Type        string            `json:"type"`
	Title       string            `json:"title"`
	Description string            `json:"description"`
	GridPos     *gridPos          `json:"gridPos"`
	Datasource  *datasourceRef    `json:"datasource"`
	Targets     []json.RawMessage `json:"targets"`
	Panels      []panel           `json:"panels"`
	Collapsed   bool              `json:"collapsed"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	Expr       string         `json:"expr"`
	RefID      string         `json:"refId"`
	Datasource *datasourceRef `json:"datasource"`
}

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string         `json:"name"`
			Expr       string         `json:"expr"`
			Datasource *datasourceRef `json:"datasource"`
		} `json:"list"`
	} `json:"annotations"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(readRepoFile(t, "deploy/grafana/usagebreaker.json"))))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("deploy/grafana/usagebreaker.json: %v", err)
	}
	return d
}

// allPanels flattens rows (collapsed rows keep their panels inside).
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// TestDashboardStructure checks what Grafana needs to show the dashboard and
// what a person needs to read it: a current schema, unique panel ids, a grid
// position inside the 24 columns without overlaps, a Prometheus datasource
// (the dashboard's variable) and a query on every panel, titles, and the
// panels the issue asks for.
func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid (stable links, provisioning) and a title")
	}
	// Grafana 11 writes schemaVersion 39 and later; older ones migrate it.
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion %d: want a current Grafana's (39 or later)", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" {
		t.Error(`the dashboard needs a "datasource" variable of type datasource, so it works with any Prometheus`)
	}
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	titles := map[string]bool{}
	for _, p := range allPanels(d.Panels) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 {
			t.Errorf("%s: no id", where)
		} else if other, dup := ids[p.ID]; dup {
			t.Errorf("%s: id %d is also %s's", where, p.ID, other)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			t.Errorf("%s: no title", where)
		}
		titles[p.Title] = true
		g := p.GridPos
		if g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v is missing or outside the 24 columns", where, g)
			continue
		}
	cells:
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("%s overlaps %s at column %d, row %d", where, other, x, y)
					break cells
				}
				taken[cell{x, y}] = where
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Description == "" {
			t.Errorf("%s: no description (the (i) a person reads)", where)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want the Prometheus ${datasource} variable", where, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no targets", where)
		}
		refs := map[string]bool{}
		for i, raw := range p.Targets {
			var tg target
			if err := json.Unmarshal(raw, &tg); err != nil {
				t.Errorf("%s target %d: %v", where, i, err)
				continue
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s target %d: no expr", where, i)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s target %d: refId %q missing or repeated", where, i, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("%s target %d: datasource %+v, want ${datasource}", where, i, tg.Datasource)
			}
			if !strings.Contains(tg.Expr, `job=~"$job"`) || !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("%s target %d: %q does not filter on the $job and $instance variables", where, i, tg.Expr)
			}
		}
	}
	// What the issue asks a person to see at a glance.
	for _, want := range []string{"Trips by rule", "Suspensions by rule and outcome", "Callbacks by outcome",
		"Managed triggers by rule", "Reconcile duration", "Time since last good reconcile", "Requests by operation",
		"Errors by operation and code", "Pending actions and held suspensions", "Notifications by notifier and outcome",
		"Config reload status"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
}

// TestDashboardMetricsExported: every metric name in a panel query, a
// variable's query and an annotation is one the daemon exports (or the
// contract names).
func TestDashboardMetricsExported(t *testing.T) {
	d := loadDashboard(t)
	var refs []exprRef
	for _, p := range allPanels(d.Panels) {
		for i, raw := range p.Targets {
			var tg target
			if err := json.Unmarshal(raw, &tg); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, exprRef{fmt.Sprintf("panel %q target %d", p.Title, i), tg.Expr})
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, q.Query)
			continue
		}
		refs = append(refs, exprRef{"variable " + v.Name, m[1]})
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			refs = append(refs, exprRef{"annotation " + a.Name, a.Expr})
		}
	}
	checkExported(t, refs)
}

// TestGrafanaProvisioning checks the provisioning files: a Prometheus
// datasource, and a file provider whose path the compose file mounts the
// dashboard into.
func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name, Type, UID, URL, Access string
			IsDefault                    bool `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deploy/grafana/provisioning/datasources/prometheus.yaml"), &ds); err != nil {
		t.Fatal(err)
	}
	if ds.APIVersion != 1 || len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" ||
		!strings.HasPrefix(ds.Datasources[0].URL, "http") || !ds.Datasources[0].IsDefault {
		t.Errorf("datasource provisioning: %+v", ds)
	}
	var dp struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name, Type string
			Options    struct{ Path string }
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deploy/grafana/provisioning/dashboards/usagebreaker.yaml"), &dp); err != nil {
		t.Fatal(err)
	}
	if dp.APIVersion != 1 || len(dp.Providers) != 1 || dp.Providers[0].Type != "file" || dp.Providers[0].Options.Path == "" {
		t.Fatalf("dashboard provisioning: %+v", dp)
	}
	compose := string(readRepoFile(t, "deploy/compose/compose.yaml"))
	mount := "../grafana/usagebreaker.json:" + dp.Providers[0].Options.Path + "/usagebreaker.json"
	if !strings.Contains(compose, mount) {
		t.Errorf("compose.yaml does not mount the dashboard where the provider looks (%s)", mount)
	}
}
