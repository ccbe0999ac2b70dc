package wire

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
)

// UnmarshalExact decodes the JSON object data into the struct v (a pointer)
// matching member names exactly. encoding/json matches them
// case-insensitively, so {"ACCESS_TOKEN": …} would fill AccessToken; the
// official Prelude SDKs and RFC 6749 clients read the exact names
// (data.access_token), so a member spelled otherwise is ignored here too, as
// if absent. Only v's top-level fields are matched this way: token and
// challenge answers are flat.
//
// It decodes twice (into members, then the kept ones into v): token
// answers are a few hundred bytes and arrive once per refresh, so the cost
// does not matter, and it keeps encoding/json's handling of every value.
func UnmarshalExact(data []byte, v any) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		return err
	}
	if members == nil {
		return errors.New("not a JSON object")
	}
	names := jsonNames(reflect.TypeOf(v).Elem())
	for name := range members {
		if _, ok := names[name]; !ok {
			delete(members, name)
		}
	}
	kept, err := json.Marshal(members)
	if err != nil {
		return err
	}
	return json.Unmarshal(kept, v)
}

// jsonNames is the set of member names encoding/json would fill in the
// struct type t.
func jsonNames(t reflect.Type) map[string]struct{} {
	names := make(map[string]struct{}, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names[name] = struct{}{}
	}
	return names
}
