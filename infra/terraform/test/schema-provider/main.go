// Command terraform-provider-aws is runnel's schema-only stand-in for the
// hashicorp/aws provider 6.25.0, used only to run `tofu validate` offline.
//
// It serves, over plugin protocol 6, the provider / resource / data source
// schemas converted by convert.py from cdktf's jsii assembly of AWS provider
// 6.25.0 (embedded as schema.json.gz, which build.sh puts next to this file in
// its build directory). It never talks to AWS: reading data sources, applying,
// importing and the like return an error diagnostic. See README.md.
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"sort"

	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6/tf6server"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
)

const (
	providerAddr = "registry.opentofu.org/hashicorp/aws"
	who          = "schema-only provider (runnel's tofu validate stand-in for hashicorp/aws 6.25.0)"
)

//go:embed schema.json.gz
var schemaGz []byte

// ---------------------------------------------------------------- schema JSON

type jsonBlock struct {
	Attrs  map[string]jsonAttr        `json:"a"`
	Blocks map[string]jsonNestedBlock `json:"b"`
}

type jsonAttr struct {
	Type   json.RawMessage `json:"t"`
	Nested *jsonNested     `json:"n"`
	Flags  string          `json:"f"`
}

type jsonNested struct {
	Mode  string              `json:"m"`
	Attrs map[string]jsonAttr `json:"a"`
}

type jsonNestedBlock struct {
	Mode  string    `json:"m"`
	Min   int64     `json:"min"`
	Max   int64     `json:"max"`
	Block jsonBlock `json:"b"`
}

type jsonSchema struct {
	Provider    jsonBlock            `json:"provider"`
	Resources   map[string]jsonBlock `json:"resources"`
	DataSources map[string]jsonBlock `json:"data_sources"`
}

func parseType(raw json.RawMessage) (tftypes.Type, error) {
	var v interface{}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return typeOf(v)
}

func typeOf(v interface{}) (tftypes.Type, error) {
	switch t := v.(type) {
	case string:
		switch t {
		case "string":
			return tftypes.String, nil
		case "number":
			return tftypes.Number, nil
		case "bool":
			return tftypes.Bool, nil
		case "dynamic":
			return tftypes.DynamicPseudoType, nil
		}
	case []interface{}:
		if len(t) == 2 {
			kind, _ := t[0].(string)
			switch kind {
			case "list", "set", "map":
				el, err := typeOf(t[1])
				if err != nil {
					return nil, err
				}
				switch kind {
				case "list":
					return tftypes.List{ElementType: el}, nil
				case "set":
					return tftypes.Set{ElementType: el}, nil
				default:
					return tftypes.Map{ElementType: el}, nil
				}
			case "object":
				m, _ := t[1].(map[string]interface{})
				attrs := make(map[string]tftypes.Type, len(m))
				for k, sub := range m {
					st, err := typeOf(sub)
					if err != nil {
						return nil, err
					}
					attrs[k] = st
				}
				return tftypes.Object{AttributeTypes: attrs}, nil
			}
		}
	}
	return nil, fmt.Errorf("unsupported type %v", v)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func convAttr(name string, a jsonAttr) (*tfprotov6.SchemaAttribute, error) {
	out := &tfprotov6.SchemaAttribute{
		Name:     name,
		Required: a.Flags == "r",
		Optional: a.Flags == "o" || a.Flags == "oc",
		Computed: a.Flags == "c" || a.Flags == "oc",
	}
	if a.Nested != nil {
		obj := &tfprotov6.SchemaObject{}
		switch a.Nested.Mode {
		case "single":
			obj.Nesting = tfprotov6.SchemaObjectNestingModeSingle
		case "list":
			obj.Nesting = tfprotov6.SchemaObjectNestingModeList
		case "set":
			obj.Nesting = tfprotov6.SchemaObjectNestingModeSet
		case "map":
			obj.Nesting = tfprotov6.SchemaObjectNestingModeMap
		default:
			return nil, fmt.Errorf("%s: bad nesting %q", name, a.Nested.Mode)
		}
		for _, k := range sortedKeys(a.Nested.Attrs) {
			sub, err := convAttr(k, a.Nested.Attrs[k])
			if err != nil {
				return nil, fmt.Errorf("%s.%w", name, err)
			}
			obj.Attributes = append(obj.Attributes, sub)
		}
		out.NestedType = obj
		return out, nil
	}
	t, err := parseType(a.Type)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	out.Type = t
	return out, nil
}

func convBlock(b jsonBlock) (*tfprotov6.SchemaBlock, error) {
	out := &tfprotov6.SchemaBlock{}
	for _, k := range sortedKeys(b.Attrs) {
		a, err := convAttr(k, b.Attrs[k])
		if err != nil {
			return nil, err
		}
		out.Attributes = append(out.Attributes, a)
	}
	for _, k := range sortedKeys(b.Blocks) {
		nb := b.Blocks[k]
		inner, err := convBlock(nb.Block)
		if err != nil {
			return nil, fmt.Errorf("%s.%w", k, err)
		}
		n := &tfprotov6.SchemaNestedBlock{TypeName: k, Block: inner, MinItems: nb.Min, MaxItems: nb.Max}
		switch nb.Mode {
		case "single":
			n.Nesting = tfprotov6.SchemaNestedBlockNestingModeSingle
		case "list":
			n.Nesting = tfprotov6.SchemaNestedBlockNestingModeList
		case "set":
			n.Nesting = tfprotov6.SchemaNestedBlockNestingModeSet
		default:
			return nil, fmt.Errorf("%s: bad nesting %q", k, nb.Mode)
		}
		out.BlockTypes = append(out.BlockTypes, n)
	}
	return out, nil
}

func loadSchemas() (*tfprotov6.GetProviderSchemaResponse, error) {
	zr, err := gzip.NewReader(bytes.NewReader(schemaGz))
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	var js jsonSchema
	if err := json.Unmarshal(raw, &js); err != nil {
		return nil, err
	}
	resp := &tfprotov6.GetProviderSchemaResponse{
		ServerCapabilities:       &tfprotov6.ServerCapabilities{PlanDestroy: true},
		ResourceSchemas:          map[string]*tfprotov6.Schema{},
		DataSourceSchemas:        map[string]*tfprotov6.Schema{},
		Functions:                map[string]*tfprotov6.Function{},
		EphemeralResourceSchemas: map[string]*tfprotov6.Schema{},
		ListResourceSchemas:      map[string]*tfprotov6.Schema{},
	}
	pb, err := convBlock(js.Provider)
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	resp.Provider = &tfprotov6.Schema{Block: pb}
	for name, b := range js.Resources {
		sb, err := convBlock(b)
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", name, err)
		}
		resp.ResourceSchemas[name] = &tfprotov6.Schema{Block: sb}
	}
	for name, b := range js.DataSources {
		sb, err := convBlock(b)
		if err != nil {
			return nil, fmt.Errorf("data source %s: %w", name, err)
		}
		resp.DataSourceSchemas[name] = &tfprotov6.Schema{Block: sb}
	}
	return resp, nil
}

// ---------------------------------------------------------------- server

type server struct {
	schemas *tfprotov6.GetProviderSchemaResponse
}

func errDiag(what string) []*tfprotov6.Diagnostic {
	return []*tfprotov6.Diagnostic{{
		Severity: tfprotov6.DiagnosticSeverityError,
		Summary:  who + ": cannot " + what,
		Detail: "This provider binary only serves the hashicorp/aws 6.25.0 schemas so that `tofu validate` " +
			"can type-check configuration offline. It has no AWS client and never creates, reads or changes anything. " +
			"Use the real hashicorp/aws provider for plan/apply.",
	}}
}

func (s *server) GetMetadata(ctx context.Context, req *tfprotov6.GetMetadataRequest) (*tfprotov6.GetMetadataResponse, error) {
	resp := &tfprotov6.GetMetadataResponse{ServerCapabilities: s.schemas.ServerCapabilities}
	for _, k := range sortedKeys(s.schemas.ResourceSchemas) {
		resp.Resources = append(resp.Resources, tfprotov6.ResourceMetadata{TypeName: k})
	}
	for _, k := range sortedKeys(s.schemas.DataSourceSchemas) {
		resp.DataSources = append(resp.DataSources, tfprotov6.DataSourceMetadata{TypeName: k})
	}
	return resp, nil
}

func (s *server) GetProviderSchema(ctx context.Context, req *tfprotov6.GetProviderSchemaRequest) (*tfprotov6.GetProviderSchemaResponse, error) {
	return s.schemas, nil
}

func (s *server) GetResourceIdentitySchemas(ctx context.Context, req *tfprotov6.GetResourceIdentitySchemasRequest) (*tfprotov6.GetResourceIdentitySchemasResponse, error) {
	return &tfprotov6.GetResourceIdentitySchemasResponse{IdentitySchemas: map[string]*tfprotov6.ResourceIdentitySchema{}}, nil
}

func (s *server) ValidateProviderConfig(ctx context.Context, req *tfprotov6.ValidateProviderConfigRequest) (*tfprotov6.ValidateProviderConfigResponse, error) {
	// tofu itself checks the configuration against the schema.
	return &tfprotov6.ValidateProviderConfigResponse{PreparedConfig: req.Config}, nil
}

func (s *server) ConfigureProvider(ctx context.Context, req *tfprotov6.ConfigureProviderRequest) (*tfprotov6.ConfigureProviderResponse, error) {
	// Nothing to configure; accepting it lets `tofu plan` get as far as planning.
	return &tfprotov6.ConfigureProviderResponse{}, nil
}

func (s *server) StopProvider(ctx context.Context, req *tfprotov6.StopProviderRequest) (*tfprotov6.StopProviderResponse, error) {
	return &tfprotov6.StopProviderResponse{}, nil
}

// ---- resources

func (s *server) ValidateResourceConfig(ctx context.Context, req *tfprotov6.ValidateResourceConfigRequest) (*tfprotov6.ValidateResourceConfigResponse, error) {
	return &tfprotov6.ValidateResourceConfigResponse{}, nil
}

func (s *server) UpgradeResourceState(ctx context.Context, req *tfprotov6.UpgradeResourceStateRequest) (*tfprotov6.UpgradeResourceStateResponse, error) {
	sc, ok := s.schemas.ResourceSchemas[req.TypeName]
	if !ok || req.RawState == nil {
		return &tfprotov6.UpgradeResourceStateResponse{Diagnostics: errDiag("upgrade state of unknown resource type " + req.TypeName)}, nil
	}
	typ := sc.ValueType()
	v, err := req.RawState.UnmarshalWithOpts(typ, tfprotov6.UnmarshalOpts{ValueFromJSONOpts: tftypes.ValueFromJSONOpts{IgnoreUndefinedAttributes: true}})
	if err != nil {
		return &tfprotov6.UpgradeResourceStateResponse{Diagnostics: errDiag("decode prior state: " + err.Error())}, nil
	}
	dv, err := tfprotov6.NewDynamicValue(typ, v)
	if err != nil {
		return nil, err
	}
	return &tfprotov6.UpgradeResourceStateResponse{UpgradedState: &dv}, nil
}

func (s *server) ReadResource(ctx context.Context, req *tfprotov6.ReadResourceRequest) (*tfprotov6.ReadResourceResponse, error) {
	// No API access: report the state unchanged.
	return &tfprotov6.ReadResourceResponse{NewState: req.CurrentState, Private: req.Private}, nil
}

// markComputedUnknown replaces null computed attributes of an object value
// (recursively through nested blocks) with unknown values.
func markComputedUnknown(b *tfprotov6.SchemaBlock, v tftypes.Value) (tftypes.Value, error) {
	if v.IsNull() || !v.IsKnown() {
		return v, nil
	}
	var fields map[string]tftypes.Value
	if err := v.As(&fields); err != nil {
		return v, err
	}
	for _, a := range b.Attributes {
		if f, ok := fields[a.Name]; ok && a.Computed && f.IsNull() {
			fields[a.Name] = tftypes.NewValue(f.Type(), tftypes.UnknownValue)
		}
	}
	for _, nb := range b.BlockTypes {
		f, ok := fields[nb.TypeName]
		if !ok || f.IsNull() || !f.IsKnown() {
			continue
		}
		switch nb.Nesting {
		case tfprotov6.SchemaNestedBlockNestingModeSingle, tfprotov6.SchemaNestedBlockNestingModeGroup:
			nv, err := markComputedUnknown(nb.Block, f)
			if err != nil {
				return v, err
			}
			fields[nb.TypeName] = nv
		case tfprotov6.SchemaNestedBlockNestingModeList, tfprotov6.SchemaNestedBlockNestingModeSet:
			var elems []tftypes.Value
			if err := f.As(&elems); err != nil {
				return v, err
			}
			for i := range elems {
				nv, err := markComputedUnknown(nb.Block, elems[i])
				if err != nil {
					return v, err
				}
				elems[i] = nv
			}
			fields[nb.TypeName] = tftypes.NewValue(f.Type(), elems)
		}
	}
	return tftypes.NewValue(v.Type(), fields), nil
}

func (s *server) PlanResourceChange(ctx context.Context, req *tfprotov6.PlanResourceChangeRequest) (*tfprotov6.PlanResourceChangeResponse, error) {
	sc, ok := s.schemas.ResourceSchemas[req.TypeName]
	if !ok {
		return &tfprotov6.PlanResourceChangeResponse{Diagnostics: errDiag("plan unknown resource type " + req.TypeName)}, nil
	}
	typ := sc.ValueType()
	proposed, err := req.ProposedNewState.Unmarshal(typ)
	if err != nil {
		return &tfprotov6.PlanResourceChangeResponse{Diagnostics: errDiag("decode proposed state: " + err.Error())}, nil
	}
	planned, err := markComputedUnknown(sc.Block, proposed)
	if err != nil {
		return &tfprotov6.PlanResourceChangeResponse{Diagnostics: errDiag("plan: " + err.Error())}, nil
	}
	dv, err := tfprotov6.NewDynamicValue(typ, planned)
	if err != nil {
		return nil, err
	}
	return &tfprotov6.PlanResourceChangeResponse{PlannedState: &dv, PlannedPrivate: req.PriorPrivate}, nil
}

func (s *server) ApplyResourceChange(ctx context.Context, req *tfprotov6.ApplyResourceChangeRequest) (*tfprotov6.ApplyResourceChangeResponse, error) {
	return &tfprotov6.ApplyResourceChangeResponse{NewState: req.PriorState, Diagnostics: errDiag("apply changes to " + req.TypeName)}, nil
}

func (s *server) ImportResourceState(ctx context.Context, req *tfprotov6.ImportResourceStateRequest) (*tfprotov6.ImportResourceStateResponse, error) {
	return &tfprotov6.ImportResourceStateResponse{Diagnostics: errDiag("import " + req.TypeName)}, nil
}

func (s *server) MoveResourceState(ctx context.Context, req *tfprotov6.MoveResourceStateRequest) (*tfprotov6.MoveResourceStateResponse, error) {
	return &tfprotov6.MoveResourceStateResponse{Diagnostics: errDiag("move resource state to " + req.TargetTypeName)}, nil
}

func (s *server) UpgradeResourceIdentity(ctx context.Context, req *tfprotov6.UpgradeResourceIdentityRequest) (*tfprotov6.UpgradeResourceIdentityResponse, error) {
	return &tfprotov6.UpgradeResourceIdentityResponse{Diagnostics: errDiag("upgrade resource identity of " + req.TypeName)}, nil
}

func (s *server) GenerateResourceConfig(ctx context.Context, req *tfprotov6.GenerateResourceConfigRequest) (*tfprotov6.GenerateResourceConfigResponse, error) {
	return &tfprotov6.GenerateResourceConfigResponse{Diagnostics: errDiag("generate resource config for " + req.TypeName)}, nil
}

// ---- data sources

func (s *server) ValidateDataResourceConfig(ctx context.Context, req *tfprotov6.ValidateDataResourceConfigRequest) (*tfprotov6.ValidateDataResourceConfigResponse, error) {
	return &tfprotov6.ValidateDataResourceConfigResponse{}, nil
}

func (s *server) ReadDataSource(ctx context.Context, req *tfprotov6.ReadDataSourceRequest) (*tfprotov6.ReadDataSourceResponse, error) {
	return &tfprotov6.ReadDataSourceResponse{Diagnostics: errDiag("read data sources (data." + req.TypeName + ")")}, nil
}

// ---- functions (none)

func (s *server) GetFunctions(ctx context.Context, req *tfprotov6.GetFunctionsRequest) (*tfprotov6.GetFunctionsResponse, error) {
	return &tfprotov6.GetFunctionsResponse{Functions: map[string]*tfprotov6.Function{}}, nil
}

func (s *server) CallFunction(ctx context.Context, req *tfprotov6.CallFunctionRequest) (*tfprotov6.CallFunctionResponse, error) {
	return &tfprotov6.CallFunctionResponse{Error: &tfprotov6.FunctionError{Text: who + ": has no function " + req.Name}}, nil
}

// ---- ephemeral resources (none)

func (s *server) ValidateEphemeralResourceConfig(ctx context.Context, req *tfprotov6.ValidateEphemeralResourceConfigRequest) (*tfprotov6.ValidateEphemeralResourceConfigResponse, error) {
	return &tfprotov6.ValidateEphemeralResourceConfigResponse{Diagnostics: errDiag("validate unknown ephemeral resource " + req.TypeName)}, nil
}

func (s *server) OpenEphemeralResource(ctx context.Context, req *tfprotov6.OpenEphemeralResourceRequest) (*tfprotov6.OpenEphemeralResourceResponse, error) {
	return &tfprotov6.OpenEphemeralResourceResponse{Diagnostics: errDiag("open ephemeral resources")}, nil
}

func (s *server) RenewEphemeralResource(ctx context.Context, req *tfprotov6.RenewEphemeralResourceRequest) (*tfprotov6.RenewEphemeralResourceResponse, error) {
	return &tfprotov6.RenewEphemeralResourceResponse{Diagnostics: errDiag("renew ephemeral resources")}, nil
}

func (s *server) CloseEphemeralResource(ctx context.Context, req *tfprotov6.CloseEphemeralResourceRequest) (*tfprotov6.CloseEphemeralResourceResponse, error) {
	return &tfprotov6.CloseEphemeralResourceResponse{}, nil
}

func main() {
	schemas, err := loadSchemas()
	if err != nil {
		log.Fatalf("%s: embedded schema: %v", who, err)
	}
	if err := tf6server.Serve(providerAddr, func() tfprotov6.ProviderServer { return &server{schemas: schemas} }); err != nil {
		log.Fatal(err)
	}
}
